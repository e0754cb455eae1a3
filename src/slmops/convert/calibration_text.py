"""Calibration text: the last tokens of the shipped eval text, as inputs of an FP32 graph.

`slmops eval` scores the first windows of the same text, so no quantizer calibrated here is ever
measured on the tokens it saw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slmops.modelfolder.folder import read_genai_config


class CalibrationWindows:
    """Prompts of the shipped eval text's last tokens, as inputs of the FP32 graph (no KV cache yet).

    onnxruntime copies the reader and iterates over it, so it is a plain re-iterable list.
    """

    def __init__(self, model_dir: Path, windows: int, tokens: int):
        self.items = [self._inputs(model_dir, window) for window in calibration_windows(model_dir, windows, tokens)]

    @staticmethod
    def _inputs(model_dir: Path, ids: np.ndarray) -> dict:
        import onnx

        graph = onnx.load(str(Path(model_dir) / "model.onnx"), load_external_data=False).graph
        decoder = read_genai_config(model_dir)["model"]["decoder"]
        empty_cache = np.zeros((1, decoder["num_key_value_heads"], 0, decoder["head_size"]), dtype=np.float32)
        batch = ids[None, :].astype(np.int64)
        feeds = {"input_ids": batch, "attention_mask": np.ones_like(batch)}
        for item in graph.input:
            if item.name.startswith("past_key_values"):
                feeds[item.name] = empty_cache
            elif item.name == "position_ids":
                feeds[item.name] = np.arange(batch.shape[1], dtype=np.int64)[None, :]
        return feeds

    def get_next(self):
        return None  # onnxruntime iterates with __iter__; get_next is its reader interface

    def __iter__(self):
        return iter(self.items)


# The first tokens of the text that `eval` and the benchmarks score (32 windows of 512): never calibrated on.
SCORED_TOKENS = 32 * 512


def calibration_windows(model_dir: Path, windows: int, tokens: int) -> list[np.ndarray]:
    """``windows`` runs of ``tokens`` token ids from the end of the shipped eval text, as many as fit
    after its first :data:`SCORED_TOKENS` (one at least)."""
    from importlib import resources

    import onnxruntime_genai as og

    text = (resources.files("slmops") / "data" / "eval-text.txt").read_text(encoding="utf-8")
    ids = np.asarray(og.Tokenizer(og.Model(str(model_dir))).encode(text), dtype=np.int64)
    windows = min(windows, max(1, (len(ids) - SCORED_TOKENS) // tokens))
    return [ids[len(ids) - (k + 1) * tokens : len(ids) - k * tokens] for k in range(windows)]
