"""The `slmops` command: parses the command line and dispatches.

Each capability owns its commands in its own package (``convert/commands.py``,
``cache/commands.py``, ...). They are imported only when invoked, so `slmops model
run` never pays for the conversion stack (torch, transformers).
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import sys
import traceback

import click

from slmops import __version__
from slmops.errors import SlmopsError

# command name -> "module:attribute" of its click command
COMMANDS = {
    "convert": "slmops.convert.commands:convert",
    "auto-opt": "slmops.convert.commands:auto_opt",
    "run": "slmops.convert.commands:run_config",
    "cache": "slmops.cache.commands:cache",
    "model": "slmops.runtime.commands:model",
    "serve": "slmops.server.commands:serve",
    "service": "slmops.server.commands:service",
    "ui": "slmops.server.commands:ui_command",
    "bench": "slmops.bench.commands:bench",
    "eval": "slmops.evaluate.commands:eval_command",
    "validate": "slmops.evaluate.commands:validate",
    "sweep": "slmops.evaluate.commands:sweep",
    "deploy": "slmops.deploy.commands:deploy_command",
}


def _available(name: str) -> bool:
    module = COMMANDS[name].split(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(name for name in COMMANDS if _available(name))

    def get_command(self, ctx, name):
        if name not in COMMANDS or not _available(name):
            return None
        module, attribute = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="slmops")
@click.option("--verbose", is_flag=True, help="Show tracebacks and detailed logs.")
def cli(verbose: bool) -> None:
    """Convert, cache, run, serve, benchmark, validate and deploy small language models on a CPU."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors and exit codes, tracebacks only with --verbose."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # --verbose is accepted anywhere on the line, not only before the command.
    verbose = "--verbose" in argv
    argv = [arg for arg in argv if arg != "--verbose"]
    try:
        # Without standalone mode click returns (not raises) the code of ctx.exit(code).
        code = cli.main(args=(["--verbose"] if verbose else []) + argv, prog_name="slmops", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except SlmopsError as exc:
        _fail(str(exc), exc.exit_code, verbose)
    except Exception as exc:  # a bug: still one line unless asked for more
        if _disk_full(exc):
            _fail(DISK_FULL, 1, verbose)
        _fail(f"{type(exc).__name__}: {exc} (run with --verbose for the traceback)", 1, verbose)


DISK_FULL = (
    "the disk is full (no space left on device). "
    "Free some space, or write elsewhere (--output, SLMOPS_HOME), and run it again."
)


def _disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` or an exception behind it ran out of disk: libraries that write files
    (safetensors, onnx, numpy) raise their own types, with the OS's message inside."""
    while exc is not None:
        if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _fail(message: str, code: int, verbose: bool) -> None:
    if verbose:
        traceback.print_exc()
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)
