"""SmolLM2 moved off its Q4_1 grid: a model for judging 4-bit methods on weights that never were 4-bit.

    .venv/bin/python benchmarks/off_grid_smollm2.py /tmp/smollm2-off-grid

The embedded SmolLM2 is a Q4_1 GGUF, so its weights sit on an asymmetric 4-bit grid in blocks
of 32 that some quantizers reproduce almost exactly. This writes a Hugging Face folder of the
same model whose 2-D weights get Gaussian noise of ``fraction`` x each block's grid step
(the block's (max - min) / 15, blocks of 32 along the input dimension), with a fixed seed.
Check its perplexity stays within a few percent of the original's (`slmops eval`).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

BLOCK = 32  # Q4_1's block


def off_grid(weight: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``weight`` plus noise of ``fraction`` grid steps (standard deviation), per block of 32 along its rows."""
    rows, cols = weight.shape
    if cols % BLOCK:
        return weight
    blocks = weight.reshape(rows, cols // BLOCK, BLOCK)
    step = (blocks.max(-1, keepdims=True) - blocks.min(-1, keepdims=True)) / 15
    noisy = blocks + rng.standard_normal(blocks.shape).astype(np.float32) * step * fraction
    return noisy.reshape(rows, cols).astype(weight.dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="Hugging Face folder to write.")
    # 0.08 steps: PPL +2.6% over the original, top-1 agreement 90% (0.3 moved it +45%: another model)
    parser.add_argument("--fraction", type=float, default=0.08, help="Noise standard deviation in grid steps.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from safetensors.numpy import load_file, save_file

    from slmops.convert import embedded_model
    from slmops.convert.gguf_source import gguf_to_hf

    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "hf"
        gguf_to_hf(embedded_model(), folder)
        tensors = load_file(str(folder / "model.safetensors"))
        rng = np.random.default_rng(args.seed)
        moved = {
            name: off_grid(value, args.fraction, rng) if value.ndim == 2 else value for name, value in tensors.items()
        }
        save_file(moved, str(folder / "model.safetensors"), metadata={"format": "pt"})
        shutil.rmtree(args.output, ignore_errors=True)
        shutil.copytree(folder, args.output)
    print(f"wrote {args.output}: 2-D weights moved by {args.fraction} grid steps (seed {args.seed})")


if __name__ == "__main__":
    main()
