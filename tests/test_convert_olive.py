"""Olive's command line and config file, accepted verbatim (on a tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.cli import main
from slmops.convert.olive import load_config, run_config
from slmops.errors import UsageError

MISSION_CONFIG = {
    "input_model": {"type": "HfModel", "model_path": "/path/to/your/finetuned/model", "task": "text-generation"},
    "systems": {
        "local_system": {"type": "LocalSystem", "accelerators": [{"execution_providers": ["CPUExecutionProvider"]}]}
    },
    "passes": {
        "builder": {
            "type": "ModelBuilder",
            "config": {"precision": "int4", "quantization_config": {"block_size": 128, "is_symmetric": False}},
        }
    },
    "host": "local_system",
    "target": "local_system",
    "cache_dir": "cache",
    "output_dir": "models/output/your-finetuned-model-onnx",
}


def cli(*args: str, capsys=None) -> tuple[int, str, str]:
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr() if capsys else None
    return code, captured.out if captured else "", captured.err if captured else ""


def write_config(folder: Path, model: Path, **changes) -> Path:
    config = json.loads(json.dumps(MISSION_CONFIG))
    config["input_model"]["model_path"] = str(model)
    for dotted, value in changes.items():
        target = config
        *parents, last = dotted.split(".")
        for part in parents:
            target = target[part]
        if value is None:
            target.pop(last, None)
        else:
            target[last] = value
    path = folder / "finetuned_conversion_config.json"
    path.write_text(json.dumps(config))
    return path


def mission_command(model: Path) -> list[str]:
    """MISSION.md's `auto-opt` command line, converting ``model``."""
    return [
        "auto-opt",
        "--model_name_or_path",
        str(model),
        "--device",
        "cpu",
        "--provider",
        "CPUExecutionProvider",
        "--use_model_builder",
        "--precision",
        "int4",
        "--output_path",
        "models/your-model-name/onnx",
        "--log_level",
        "1",
    ]


def test_mission_auto_opt_command_line(tiny_llama, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(*mission_command(tiny_llama), capsys=capsys)
    assert code == 0, err
    output = tmp_path / "models/your-model-name/onnx"
    assert (output / "model.onnx").exists()
    assert json.loads((output / "inference_model.json").read_text())["Name"] == "your-model-name"
    assert "your-model-name" in out
    # Olive overwrites its own earlier result; so does slmops for an earlier slmops conversion.
    code, _, err = cli(
        "auto-opt", "-m", str(tiny_llama), "--precision", "int4", "-o", "models/your-model-name/onnx", capsys=capsys
    )
    assert code == 0, err


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--trust_remote_code"], "never runs code"),
        (["--data_name", "squad"], "--data_name is an Olive flag"),
        (["--device", "gpu"], "--device gpu is not supported"),
        (["--provider", "CUDAExecutionProvider"], "CUDAExecutionProvider is not supported"),
        (["--enable_search"], "no search"),
        (["--no_such_flag"], "unknown option '--no_such_flag'"),
    ],
)
def test_auto_opt_rejects_flags_that_make_no_sense_here(tiny_llama, tmp_path, capsys, args, fragment):
    code, _, err = cli("auto-opt", "-m", str(tiny_llama), "-o", str(tmp_path / "o"), *args, capsys=capsys)
    assert code != 0 and fragment in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_mission_config_runs_then_reuses_the_cache(tiny_llama, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, tiny_llama)
    code, out, err = cli("run", "--config", str(config), capsys=capsys)
    assert code == 0, err
    output = tmp_path / "models/output/your-finetuned-model-onnx"
    report = json.loads((output / "conversion.json").read_text())
    assert report["quantization"]["block_size"] == 128 and report["quantization"]["is_symmetric"] is False
    assert report["builder_options"]["shared_embeddings"] == "false"  # the tied-embedding trap
    assert "Reusing" not in out
    first = (output / "model.onnx.data").stat().st_mtime_ns

    code, out, err = cli("run", "--config", str(config), capsys=capsys)
    assert code == 0, err
    assert "Reusing the conversion cached in" in out and "nothing converted" in out
    assert (output / "model.onnx").exists() and (output / "model.onnx.data").stat().st_mtime_ns == first
    assert len(list((tmp_path / "cache" / "slmops-conversions").iterdir())) == 1


def test_changed_settings_convert_again(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_config(write_config(tmp_path, tiny_llama), log_level=0, echo=lambda line: None)
    lines = []
    run_config(
        write_config(tmp_path, tiny_llama, **{"passes.builder.config.precision": "int8"}),
        log_level=0,
        echo=lines.append,
    )
    assert lines == [] and len(list((tmp_path / "cache" / "slmops-conversions").iterdir())) == 2


@pytest.mark.parametrize(
    "changes, fragment",
    [
        (
            {"passes.builder.type": "OnnxConversion"},
            "'passes.builder.type': 'OnnxConversion' is not supported; supported: ModelBuilder",
        ),
        (
            {"systems.local_system.accelerators": [{"execution_providers": ["CUDAExecutionProvider"]}]},
            'supported: ["CPUExecutionProvider"]',
        ),
        ({"input_model.model_path": None}, "'input_model.model_path' is required"),
        ({"input_model.type": "PyTorchModel"}, "supported: HfModel"),
        ({"passes.builder.config.quantization_config": {"block_size": 100}}, "supported: 16, 32, 64, 128, 256"),
        ({"evaluators": {}}, "key 'evaluators' is not supported"),
        (
            {"passes.builder.config.extra": 1},
            "'passes.builder.config.extra' is not supported by slmops; remove it (supported: precision, quantization_config)",
        ),
        ({"host": "remote"}, "host: 'remote' is not one of systems"),
    ],
)
def test_unsupported_config_stops_before_any_work(tiny_llama, tmp_path, monkeypatch, capsys, changes, fragment):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, tiny_llama, **changes)
    code, _, err = cli("run", "--config", str(config), capsys=capsys)
    assert code != 0 and fragment in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["finetuned_conversion_config.json"]


def test_block_size_is_checked_once_with_one_message():
    from pydantic import ValidationError

    from slmops.convert import QuantizationOptions
    from slmops.convert.olive import QuantizationConfig

    for settings in (QuantizationOptions, QuantizationConfig):  # `slmops convert`'s and an Olive config's
        with pytest.raises(ValidationError, match="48 is not supported; supported: 16, 32, 64, 128, 256"):
            settings(block_size=48)


def test_malformed_and_missing_config_files(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(UsageError, match="not valid JSON"):
        load_config(broken)
    with pytest.raises(UsageError, match="does not exist"):
        load_config(tmp_path / "nope.json")


def test_inline_pass_settings_are_accepted(tiny_llama, tmp_path):
    config = write_config(tmp_path, tiny_llama, **{"passes.builder": {"type": "ModelBuilder", "precision": "int8"}})
    assert load_config(config).builder.precision == "int8"
