import subprocess
import sys

from slmops.cli import COMMANDS, main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slmops", *args], capture_output=True, text=True)


def test_help_lists_available_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "Usage: slmops" in result.stdout


def test_unknown_command_is_a_one_line_usage_error():
    result = run_cli("no-such-command")
    assert result.returncode == 2
    assert "No such command 'no-such-command'" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_registered_command_points_at_a_module_path():
    for name, target in COMMANDS.items():
        module, _, attribute = target.partition(":")
        assert module.startswith("slmops.") and attribute, name


def test_main_exits_zero_on_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert "slmops, version" in capsys.readouterr().out


def test_a_commands_exit_code_reaches_the_shell(monkeypatch):
    import click

    @click.command()
    def fails():
        click.get_current_context().exit(3)

    assert exit_code_of(monkeypatch, fails) == 3


def exit_code_of(monkeypatch, command) -> int:
    """The exit code main() gives when ``command`` is what the group runs."""
    monkeypatch.setitem(COMMANDS, "command-for-test", "tests.test_cli:_unused")
    monkeypatch.setattr("slmops.cli.LazyGroup.get_command", lambda self, ctx, name: command)
    try:
        main(["command-for-test"])
    except SystemExit as exc:
        return exc.code
    raise AssertionError("main() did not exit")


def test_a_full_disk_is_one_line_that_says_what_to_do(monkeypatch, capsys):
    import click

    @click.command()
    def writes():
        # safetensors reports a full disk in its own exception type, with the OS's message inside
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    assert exit_code_of(monkeypatch, writes) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the disk is full" in err and "SLMOPS_HOME" in err
    assert "Traceback" not in err
