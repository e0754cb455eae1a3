"""The one resolver (a name or a path -> ModelFolder) and what a ModelFolder says, on tiny folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.cache import resolver, store
from slmops.errors import CacheError, ModelNotFound, SlmopsError
from slmops.modelfolder.folder import GENAI_CONFIG, ModelFolder, read_model_folder
from tests.test_cache import MISSION_JSON, make_model


def write_folder(folder: Path, genai: dict | None = None, inference_model: dict | None = None) -> Path:
    """Just the two JSON files the resolver reads: enough for a path, not for the cache."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / GENAI_CONFIG).write_text(json.dumps(genai if genai is not None else {"model": {"context_length": 512}}))
    if inference_model is not None:
        (folder / "inference_model.json").write_text(json.dumps(inference_model))
    return folder


def one_line_error(kind: type[Exception], call) -> str:
    with pytest.raises(kind) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message
    return message


@pytest.fixture
def no_name_lookup(monkeypatch):
    """Fail the test if the resolver asks the cache for a name."""

    def refuse(name, include_invalid=False):
        raise AssertionError(f"{name!r} reached the name lookup")

    monkeypatch.setattr(resolver, "find", refuse)


# ---- names and paths --------------------------------------------------------


def test_a_name_is_looked_up_in_the_cache():
    make_model(store.location() / "custom" / "m", MISSION_JSON)
    folder = resolver.resolve("YOUR-finetuned-model-int4")
    assert folder.path == store.location() / "custom" / "m"
    assert folder.name == "your-finetuned-model-int4" and folder.inference_model.Name == folder.name
    assert folder.genai_config["model"]["context_length"] == 4096
    assert store.resolve is resolver.resolve  # the cache's API gathers it too


def test_paths_are_folders(tmp_path, monkeypatch, no_name_lookup):
    folder = write_folder(tmp_path / "out", inference_model={"Name": "named"})
    assert resolver.resolve(folder).name == "named"  # a Path
    assert resolver.resolve(str(folder)).path == folder  # a string with a slash
    monkeypatch.chdir(tmp_path)
    assert resolver.resolve("./out").path == Path("out")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolver.resolve("~/out").path == folder


def test_an_existing_model_folder_without_a_slash_is_a_folder(tmp_path, monkeypatch, no_name_lookup):
    write_folder(tmp_path / "plain")
    monkeypatch.chdir(tmp_path)
    folder = resolver.resolve("plain")
    assert folder.path == Path("plain") and folder.name == "plain" and folder.inference_model is None


def test_a_path_that_is_no_model_folder_is_model_not_found(tmp_path, no_name_lookup):
    missing = one_line_error(ModelNotFound, lambda: resolver.resolve(tmp_path / "missing"))
    empty = one_line_error(ModelNotFound, lambda: resolver.resolve(str(tmp_path)))
    for message, path in ((missing, tmp_path / "missing"), (empty, tmp_path)):
        assert message == f"{path} is not a model folder (no genai_config.json); give a converted model folder."


@pytest.mark.parametrize("name", ["../escape", "./nothing", "~/nothing", "a/b", ".hidden"])
def test_a_name_that_looks_like_a_path_never_reaches_the_name_lookup(name, no_name_lookup):
    assert "not a model folder" in one_line_error(ModelNotFound, lambda: resolver.resolve(name))


def test_unknown_and_unusable_names(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no folder of that name here
    assert "No model named 'no-such-model'" in one_line_error(ModelNotFound, lambda: resolver.resolve("no-such-model"))
    assert "not a model name" in one_line_error(store.InvalidModelName, lambda: resolver.resolve("back\\slash"))
    broken = make_model(store.location() / "custom" / "broken", {"Name": "broken"})
    (broken / "model.onnx").unlink()
    assert "is invalid" in one_line_error(CacheError, lambda: resolver.resolve("broken"))


def test_broken_files_are_one_line_errors(tmp_path):
    folder = write_folder(tmp_path / "m")
    (folder / GENAI_CONFIG).write_text('{"model": ')
    assert "could not be read" in one_line_error(SlmopsError, lambda: read_model_folder(folder))
    (folder / GENAI_CONFIG).write_text("[1, 2]")
    assert "not a JSON object" in one_line_error(SlmopsError, lambda: read_model_folder(folder))
    write_folder(folder, inference_model={"Description": "no Name"})
    assert "inference_model.json is invalid" in one_line_error(CacheError, lambda: read_model_folder(folder))


# ---- what a ModelFolder says ------------------------------------------------


@pytest.mark.parametrize(
    ("genai", "model_config", "expected"),
    [
        ({"model": {"context_length": 4096}, "search": {"max_length": 1024}}, None, 4096),
        ({"model": {}, "search": {"max_length": 1024}}, None, 1024),
        ({"model": {"context_length": 0}, "search": {"max_length": 1024}}, None, 1024),
        ({"model": {}}, None, 2048),
        ({}, None, 2048),
        ({"model": {"context_length": 4096}}, {"max_length": 256}, 256),  # ModelConfig may lower it
        ({"model": {"context_length": 512}}, {"max_length": 2048}, 512),  # never raise it
        ({"model": {}}, {"max_length": 4096}, 2048),
        ({"model": {"context_length": 4096}}, {"temperature": 0.5}, 4096),
    ],
)
def test_context_length(tmp_path, genai, model_config, expected):
    info = {"Name": "m", **({"ModelConfig": model_config} if model_config else {})}
    assert read_model_folder(write_folder(tmp_path / "m", genai, info)).context_length == expected


def test_the_cache_lists_the_built_context_and_a_run_gets_the_capped_one():
    make_model(store.location() / "custom" / "m", MISSION_JSON)  # context 4096, ModelConfig.max_length 2048
    assert store.find(MISSION_JSON["Name"]).context_length == 4096
    assert resolver.resolve(MISSION_JSON["Name"]).context_length == 2048


def test_generation_settings_come_from_search_and_model_config(tmp_path):
    genai = {"model": {"context_length": 512}, "search": {"do_sample": True, "top_k": 40}}
    folder = read_model_folder(write_folder(tmp_path / "m", genai, MISSION_JSON))
    assert folder.search == genai["search"]
    assert folder.model_config == MISSION_JSON["ModelConfig"]
    bare = ModelFolder(tmp_path, {"search": "not a section"})
    assert (bare.name, bare.search, bare.model_config, bare.context_length) == (tmp_path.name, {}, {}, 2048)
