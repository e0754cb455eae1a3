"""Each MatMul quantized on the inputs the quantized model gives it: the graph run a segment at a time."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import slmops.convert.sequential as sequential
from slmops.convert.calibrated import Weights, _weight_matmuls, second_moments
from slmops.convert.calibration_text import CalibrationWindows
from slmops.convert.sequential import compensated, quantize_in_order


class Exact:
    """A "quantized" weight that is the weight itself."""

    def __init__(self, w: np.ndarray):
        self.w = w

    def dequantize(self, k: int) -> np.ndarray:
        return self.w[:, :k]


@pytest.mark.parametrize("per_run", [2, 8])  # batches of 2 and 1 windows, or all 3 in one
def test_the_graph_run_in_segments_gives_every_matmul_its_own_inputs(tiny_onnx, tmp_path, monkeypatch, per_run):
    import onnx

    monkeypatch.setattr(sequential, "WINDOWS_PER_RUN", per_run)
    model = onnx.load(str(tiny_onnx / "model.onnx"), load_external_data=False)
    weights = Weights(tiny_onnx, model.graph)
    nodes = _weight_matmuls(model.graph)
    seen: dict[str, np.ndarray] = {}

    def quantize(node, w, moment):
        seen[node.input[0]] = moment
        return Exact(w)

    items = quantize_in_order(model, nodes, weights, CalibrationWindows(tiny_onnx, 3, 32).items, quantize, 0.1, set())
    expected = second_moments(tiny_onnx, 3, 32)
    assert seen.keys() == expected.keys() and len(seen) > 4
    for name, moment in seen.items():
        np.testing.assert_allclose(moment, expected[name], rtol=1e-4, atol=1e-4 * np.abs(expected[name]).max())
    for node in nodes:  # exact weights move no input: nothing to undo
        np.testing.assert_allclose(items[node.name].w, weights.array(node.input[1]).T, rtol=1e-4, atol=1e-5)


def test_the_compensated_weights_undo_a_moved_input():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2048, 24)).astype(np.float32)
    moved = (x @ (np.eye(24) + 0.1 * rng.standard_normal((24, 24)))).astype(np.float32)  # what earlier layers did
    w = rng.standard_normal((24, 16)).astype(np.float32)
    moment, cross = moved.T.astype(np.float64) @ moved, moved.T.astype(np.float64) @ x
    fitted = compensated(w, moment, cross @ w, damping=1e-4)
    before, after = np.linalg.norm(moved @ w - x @ w), np.linalg.norm(moved @ fitted - x @ w)
    assert after < 0.05 * before
    np.testing.assert_allclose(
        compensated(w, x.T.astype(np.float64) @ x, x.T.astype(np.float64) @ x @ w, 0.1), w, atol=1e-5
    )
    assert compensated(w, np.zeros((24, 24)), np.zeros((24, 16)), 0.1) is w  # an input that is always zero


def test_weights_kept_are_quantized_as_they_are_and_the_others_undo_what_came_before(tiny_onnx):
    import onnx

    model = onnx.load(str(tiny_onnx / "model.onnx"), load_external_data=False)
    weights = Weights(tiny_onnx, model.graph)
    nodes = _weight_matmuls(model.graph)
    targets: dict[str, np.ndarray] = {}

    def coarse(node, w, moment):  # a rounding that moves every later input
        targets[node.name] = w
        return Exact(np.round(w * 4) / 4)

    feeds = CalibrationWindows(tiny_onnx, 2, 32).items
    quantize_in_order(model, nodes, weights, feeds, coarse, 0.1, {"/lm_head/MatMul"})
    original = {node.name: weights.array(node.input[1]).T for node in nodes}
    assert np.array_equal(targets["/lm_head/MatMul"], original["/lm_head/MatMul"])
    first = nodes[0].name  # reads the embedding: nothing before it was quantized
    np.testing.assert_allclose(targets[first], original[first], rtol=1e-4, atol=1e-5)
    moved = [name for name in original if name not in (first, "/lm_head/MatMul")]
    assert all(not np.allclose(targets[name], original[name], atol=1e-3) for name in moved)


def test_what_the_weights_make_of_the_inputs_is_the_same_summed_through_their_outputs(tiny_onnx, monkeypatch):
    import onnx

    model = onnx.load(str(tiny_onnx / "model.onnx"), load_external_data=False)
    weights = Weights(tiny_onnx, model.graph)
    nodes = _weight_matmuls(model.graph)
    feeds = CalibrationWindows(tiny_onnx, 2, 32).items
    joined = sequential._joined_weights
    fits = []
    for rule in (lambda fitted, width: None, lambda fitted, width: joined(fitted, 10**9)):
        monkeypatch.setattr(sequential, "_joined_weights", rule)  # X̃ᵀX times W, or X̃ᵀ(XW), for every group
        targets: dict[str, np.ndarray] = {}

        def shrunk(node, w, moment, targets=targets):  # moves every later input, smoothly (no rounding to flip)
            targets[node.name] = w
            return Exact(0.9 * w)

        quantize_in_order(model, nodes, weights, feeds, shrunk, 0.1, {"/lm_head/MatMul"})
        fits.append(targets)
    for name, target in fits[0].items():
        np.testing.assert_allclose(fits[1][name], target, rtol=1e-3, atol=1e-4 * np.abs(target).max())


def test_the_calibrated_default_fits_in_order_and_says_so(tiny_onnx, tmp_path):
    from slmops.convert.calibrated import CalibratedOptions, quantize_calibrated

    exports = {}
    for in_order in (True, False):
        folder = tmp_path / f"in-order-{in_order}"
        shutil.copytree(tiny_onnx, folder)
        options = CalibratedOptions(
            block_size=32, int8_share=0, calibration_windows=2, calibration_tokens=32, in_order=in_order
        )
        said: list[str] = []
        quantize_calibrated(folder, options, said.append)
        assert any("in graph order" in line for line in said) == in_order
        assert ("in graph order" in options.describe()) == in_order
        exports[in_order] = (folder / "model.onnx.data").read_bytes()
    assert exports[True] != exports[False]
