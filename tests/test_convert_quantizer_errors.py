"""Quantizer settings the builder used to crash on, and the one-line error every other crash becomes."""

from __future__ import annotations

import numpy as np
import pytest

from slmops.convert import QuantizationOptions, convert
from slmops.convert.matmul_nbits import pack_zero_points
from slmops.errors import ConversionError
from tests.test_convert import MIN_AGREEMENT, agreement, torch_logits


def test_zero_points_are_packed_per_row_with_odd_blocks():
    # 2 rows x 3 blocks: each row gets its own 2 bytes, the missing 4th nibble neutral (8).
    zero_points = np.array([1, 2, 3, 4, 5, 6], dtype=np.uint8)
    packed = pack_zero_points(zero_points, rows=2, k_blocks=3)
    assert packed.tolist() == [[0x21, 0x83], [0x54, 0x86]]


def test_zero_points_with_even_blocks_are_plain_nibble_pairs():
    packed = pack_zero_points(np.array([1, 2, 3, 4], dtype=np.uint8), rows=1, k_blocks=4)
    assert packed.tolist() == [[0x21, 0x43]]


@pytest.mark.parametrize("algo", ["k_quant_mixed", "rtn"])
def test_a_block_larger_than_half_the_hidden_size_converts_and_predicts(tiny_llama, tmp_path, algo):
    # hidden size 64 at blocks of 64: one block per row, an odd count the quantizer could not pack.
    quantization = QuantizationOptions(block_size=64, algo=algo, is_symmetric=algo == "k_quant_mixed")
    convert(tiny_llama, tmp_path / "b64", precision="int4", quantization=quantization, log_level=0)
    same, correlation = agreement(tmp_path / "b64", torch_logits(tiny_llama))
    assert same >= MIN_AGREEMENT["int4"] and correlation > 0.8, (same, correlation)


def test_a_quantizer_crash_names_the_layer_the_settings_and_a_working_setting(tiny_llama, tmp_path, monkeypatch):
    from onnxruntime.quantization.neural_compressor import weight_only

    def crash(node, *args, **kwargs):
        raise ValueError("cannot reshape array of size 1440 into shape (576,newaxis)")

    monkeypatch.setattr(weight_only, "make_matmul_weight_only_node", crash)
    quantization = QuantizationOptions(block_size=16, algo="k_quant_mixed")
    with pytest.raises(ConversionError) as raised:
        convert(tiny_llama, tmp_path / "models" / "out", precision="int4", quantization=quantization, log_level=0)

    message = str(raised.value)
    assert "\n" not in message
    assert "/model/layers.0/" in message and "MatMul" in message  # the layer being quantized
    assert "block_size=16" in message and "algo_config=k_quant_mixed" in message
    assert "--block-size 32 --algo default" in message
    log = message.rsplit("full log: ", 1)[1].rstrip(")")
    assert list((tmp_path / "models").iterdir()) == []  # nothing half-written
    assert "Reading layer" in open(log, encoding="utf-8").read()  # the log outlives the staging folder


def test_the_quantizers_misleading_lines_stay_out_of_the_terminal_and_others_do_not(capsys):
    import logging

    from slmops.convert.build import _quiet_logging

    root = logging.getLogger()
    before = list(root.handlers)
    try:
        with _quiet_logging(logging.getLogger("onnxruntime.quantization"), echo=False):
            # what k_quant's module does on import, inside the build: a handler made after the filters
            root.addHandler(logging.StreamHandler())
            logging.getLogger("neural_compressor").warning("Model size > 2GB. Please use model path instead")
            logging.getLogger("neural_compressor").warning("a warning slmops has not judged")
    finally:
        root.handlers = before
    shown = capsys.readouterr().err
    assert "Model size > 2GB" not in shown and "a warning slmops has not judged" in shown
