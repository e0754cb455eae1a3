"""`slmops cache ...` through click's CliRunner, and once as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from click.testing import CliRunner

from slmops.cache import store
from slmops.cache.commands import cache
from slmops.cli import main
from tests.test_cache import MISSION_JSON, make_model


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(cache, list(args), input=input, env={"COLUMNS": "200"})


def run_slmops(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slmops", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, COLUMNS="200"),
        timeout=60,
    )


def test_location_cd_and_back(tmp_path):
    default = invoke("location").output.strip()
    assert default == str(store.location())
    make_model(store.location() / "custom" / "m", {"Name": "m"})
    moved = invoke("cd", str(tmp_path / "new"))
    assert moved.exit_code == 0 and f"The cache is now {tmp_path / 'new'}" in moved.output
    assert f"1 model(s) stay in {default}" in moved.output
    assert invoke("location").output.strip() == str(tmp_path / "new")
    assert invoke("cd", default).exit_code == 0
    assert json.loads(invoke("ls", "--json").output)[0]["name"] == "m"


def test_ls_table_json_and_list_alias(tmp_path):
    assert "No models in" in invoke("ls").output
    make_model(store.location() / "custom" / "hand-made", MISSION_JSON)
    broken = make_model(store.location() / "custom" / "broken", {"Name": "broken"})
    (broken / "model.onnx.data").unlink()
    table = invoke("ls").output
    for text in (
        "your-finetuned-model-int4",
        "1.0",
        "int4",
        "KB",
        "broken (invalid)",
        "missing ONNX weights file model.onnx.data",
    ):
        assert text in table
    listed = json.loads(invoke("ls", "--json").output)
    assert [(m["name"], m["valid"], m["precision"]) for m in listed] == [
        ("broken", False, "int4"),
        ("your-finetuned-model-int4", True, "int4"),
    ]
    assert listed[1]["inference_model"] == MISSION_JSON and listed[1]["context_length"] == 4096
    assert json.loads(invoke("ls", "-o", "json").output) == listed
    assert json.loads(invoke("list", "--json").output) == listed


# What a pipe looks like to rich: not a terminal, and narrower than a long row.
PIPED = {"COLUMNS": "40", "FORCE_COLOR": None, "TTY_COMPATIBLE": None}


def only_line_with(text: str, output: str) -> str:
    lines = [line for line in output.splitlines() if text in line]
    assert len(lines) == 1, output
    return lines[0]


def test_piped_tables_keep_each_model_on_one_line(tmp_path):
    from slmops.cli import cli

    store.set_location(tmp_path / ("a-cache-folder-with-a-long-name-" * 3))
    entry = store.read_entry(make_model(store.location() / "custom" / "your-finetuned-model-int4", MISSION_JSON))
    cached = CliRunner().invoke(cache, ["ls"], env=PIPED)
    row = only_line_with("your-finetuned-model-int4", cached.output)  # as `slmops cache ls | grep NAME` finds it
    assert row.split()[:3] == ["your-finetuned-model-int4", "1.0", "int4"] and row.endswith(str(entry.path))
    listed = CliRunner().invoke(cli, ["model", "list"], env=PIPED)
    row = only_line_with("your-finetuned-model-int4", listed.output)
    assert row.split()[:2] == ["your-finetuned-model-int4", "int4"] and row.endswith(str(entry.path))


def test_add_and_remove(tmp_path):
    source = make_model(tmp_path / "out")
    added = invoke("add", str(source), "--name", "mine")
    assert added.exit_code == 0 and "Added mine" in added.output
    duplicate = invoke("add", str(source), "--name", "mine")
    assert duplicate.exit_code != 0 and "--force" in str(duplicate.exception)
    assert invoke("add", str(source), "--name", "mine", "--force", "--link").exit_code == 0
    assert (store.find("mine").path / "model.onnx").is_symlink()
    kept = invoke("remove", "MINE", input="n\n")
    assert kept.exit_code != 0 and store.find("mine")
    removed = invoke("remove", "MINE", input="y\n")
    assert removed.exit_code == 0 and "Removed mine" in removed.output and store.scan() == []


def run_main(capsys, *args: str) -> tuple[int, str]:
    """The `slmops` entry point in-process: its exit code and stderr."""
    try:
        main(list(args))
    except SystemExit as exc:
        return exc.code, capsys.readouterr().err
    raise AssertionError("main() always exits")


def test_errors_are_one_line_with_exit_codes(tmp_path, capsys):
    store.add(make_model(tmp_path / "src"), name="real")
    (tmp_path / "empty").mkdir()
    for args, code, message in [
        (("cache", "remove", "reall", "--yes"), 1, "Error: No model named 'reall' in the cache"),
        (("cache", "add", str(tmp_path / "src"), "--name", "real"), 1, "already holds a model named 'real'"),
        (("cache", "add", str(tmp_path / "empty"), "--name", "x"), 1, "holds no genai_config.json"),
        (("cache", "add", str(tmp_path / "src"), "--name", "a/b"), 2, "'a/b' is not a model name"),
    ]:
        exit_code, stderr = run_main(capsys, *args)
        assert (exit_code, len(stderr.strip().splitlines())) == (code, 1), (args, stderr)
        assert message in stderr and "Traceback" not in stderr
    assert run_main(capsys, "--verbose", "cache", "remove", "reall", "--yes")[1].startswith("Traceback")
    assert run_main(capsys, "cache", "remove", "REAL", "--yes") == (0, "")


def test_a_real_process_prints_json_and_one_line_errors(tmp_path):
    store.add(make_model(tmp_path / "src"), name="real")
    listed = run_slmops("cache", "ls", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout)[0]["name"] == "real"
    refused = run_slmops("cache", "remove", "../real", "--yes")
    assert (
        refused.returncode == 2
        and refused.stderr == "Error: '../real' is not a model name: names cannot contain '/', '\\' or '..'.\n"
    )
    assert store.find("real").valid


def test_cache_ls_imports_neither_torch_nor_onnx(tmp_path):
    make_model(store.location() / "custom" / "m", MISSION_JSON)
    code = (
        "import sys; from slmops.cli import main\n"
        "try:\n    main(['cache', 'ls'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'onnx', 'onnxruntime_genai') if m in sys.modules]\n"
        "assert not heavy, heavy\nprint('clean')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=dict(os.environ, COLUMNS="200")
    )
    assert result.returncode == 0 and "your-finetuned-model-int4" in result.stdout and "clean" in result.stdout
