"""The model cache: scanning Foundry Local layouts, names, add/remove, atomicity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from slmops import settings
from slmops.cache import scan, store
from slmops.errors import CacheError, ModelNotFound
from slmops.modelfolder.inference_model import InferenceModel

MISSION_JSON = {
    "Name": "your-finetuned-model-int4",
    "Description": "Fine-tuned quantized model",
    "Version": "1.0",
    "PromptTemplate": {
        "system": "<|im_start|>system\n{Content}<|im_end|>",
        "user": "<|im_start|>user\n{Content}<|im_end|>",
        "assistant": "<|im_start|>assistant\n{Content}<|im_end|>",
        "prompt": "<|im_start|>user\n{Content}<|im_end|>\n<|im_start|>assistant",
    },
    "ModelConfig": {"max_length": 2048, "temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1},
}
QWEN_JSON = {
    "Name": "qwen-custom",
    "PromptTemplate": {
        "assistant": "<|im_start|>assistant\n{Content}<|im_end|>",
        "prompt": "<|im_start|>user\n{Content}<|im_end|>\n<|im_start|>assistant",
    },
}
CHATML_JINJA = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
GENAI_CONFIG = {
    "model": {
        "type": "llama",
        "context_length": 4096,
        "eos_token_id": 2,
        "bos_token_id": 1,
        "vocab_size": 512,
        "decoder": {"filename": "model.onnx", "num_hidden_layers": 2, "session_options": {}},
    },
    "search": {"max_length": 4096},
}


def write_onnx(path: Path, precision: str = "int4") -> None:
    """A one-node ONNX graph whose weights live in ``model.onnx.data``, like the builder's output."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if precision in ("int4", "int8"):
        weight = numpy_helper.from_array(np.zeros((16, 1, 16), dtype=np.uint8), "w")
        node = helper.make_node(
            "MatMulNBits", ["x", "w"], ["y"], domain="com.microsoft", K=32, N=16, bits=int(precision[3:]), block_size=32
        )
    else:
        dtype = {"fp32": np.float32, "fp16": np.float16}[precision]
        weight = numpy_helper.from_array(np.zeros((32, 16), dtype=dtype), "w")
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        [weight],
    )
    onnx.save_model(
        helper.make_model(graph),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
        size_threshold=0,
    )


def make_model(
    folder: Path, inference_model: dict | None = None, precision: str = "int4", chat_template: str | None = CHATML_JINJA
) -> Path:
    """An onnxruntime-genai output folder as the converter writes it (tiny, not runnable)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "genai_config.json").write_text(json.dumps(GENAI_CONFIG))
    write_onnx(folder / "model.onnx", precision)
    (folder / "tokenizer.json").write_text(
        json.dumps({"added_tokens": [{"content": "<|im_start|>"}, {"content": "<|im_end|>"}]})
    )
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    if chat_template is not None:
        (folder / "chat_template.jinja").write_text(chat_template)
    if inference_model is not None:
        (folder / "inference_model.json").write_text(json.dumps(inference_model, indent=2))
    return folder


def names(models) -> list[str]:
    return [model.name for model in models]


# ---- scanning ---------------------------------------------------------------


def test_mission_hand_made_layout_is_found(tmp_path):
    # What a user does by hand: mkdir, copy the converted files, write the JSON.
    converted = make_model(tmp_path / "converted")
    entry = store.location() / "custom" / "your-model-folder"
    entry.mkdir(parents=True)
    for file in converted.iterdir():
        (entry / file.name).write_bytes(file.read_bytes())
    (entry / "inference_model.json").write_text(json.dumps(MISSION_JSON, indent=2))

    [model] = store.scan()
    assert (model.name, model.valid, model.reason) == ("your-finetuned-model-int4", True, None)
    assert (model.version, model.precision, model.context_length) == ("1.0", "int4", 4096)
    assert model.size_bytes == sum(file.stat().st_size for file in entry.iterdir())
    assert model.inference_model.generation_defaults() == MISSION_JSON["ModelConfig"]
    assert store.find("YOUR-FineTuned-model-INT4").path == entry


def test_qwen_style_template_only_file_is_valid():
    make_model(store.location() / "custom" / "qwen", QWEN_JSON)
    model = store.find("qwen-custom")
    assert model.valid and model.version is None and model.inference_model.ModelConfig is None
    assert model.inference_model.generation_defaults() == {}
    assert model.inference_model.render([{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant"
    )


def test_foundry_local_nesting_leaf_rule_and_download_marker():
    cache = store.location()
    make_model(cache / "Microsoft" / "phi-mini" / "cpu-int4", {"Name": "phi-mini-cpu"})
    outer = make_model(cache / "custom" / "outer", {"Name": "outer"})
    make_model(outer / "inner", {"Name": "inner"})  # below a model folder: never scanned
    partial = make_model(cache / "Microsoft" / "downloading" / "v1", {"Name": "downloading"})
    (partial / "download.tmp").touch()
    make_model(cache / "custom" / ".hidden", {"Name": "hidden"})
    os.symlink(cache, cache / "Microsoft" / "loop")  # a symlink loop must not hang or repeat models
    assert names(store.scan()) == ["outer", "phi-mini-cpu"]


def test_precision_from_graph_conversion_json_and_folder_name(tmp_path):
    cache = store.location()
    for precision in ("int4", "int8", "fp16", "fp32"):
        make_model(cache / precision, {"Name": f"m-{precision}"}, precision=precision)
    with_record = make_model(cache / "recorded", {"Name": "recorded"}, precision="fp32")
    (with_record / "conversion.json").write_text(json.dumps({"precision": "BF16", "source": "/models/base"}))
    found = {model.name: model for model in store.scan()}
    assert {name: found[name].precision for name in found} == {
        "m-int4": "int4",
        "m-int8": "int8",
        "m-fp16": "fp16",
        "m-fp32": "fp32",
        "recorded": "bf16",
    }
    assert found["recorded"].source == "/models/base"
    write_onnx(cache / "int4" / "model.onnx", "fp16")  # a graph replaced in place is read again
    assert store.find("m-int4").precision == "fp16"
    assert scan._precision(Path("/x/qwen-cpu-int4-rtn-block-32"), None, None) == "int4"


BROKEN = {
    "broken JSON": (lambda f: (f / "inference_model.json").write_text("{not json"), "not valid JSON"),
    "no Name": (lambda f: (f / "inference_model.json").write_text('{"Version": "1"}'), "Name: Field required"),
    "no placeholder": (
        lambda f: (f / "inference_model.json").write_text('{"Name": "x", "PromptTemplate": {"prompt": "hi"}}'),
        "no {Content} placeholder",
    ),
    "no genai_config": (lambda f: (f / "genai_config.json").unlink(), "no genai_config.json"),
    "no model.onnx": (lambda f: (f / "model.onnx").unlink(), "missing ONNX file model.onnx"),
    "no weights": (lambda f: (f / "model.onnx.data").unlink(), "missing ONNX weights file model.onnx.data"),
    "garbage onnx": (lambda f: (f / "model.onnx").write_bytes(b"\xff" * 64), "not a readable ONNX file"),
    "empty onnx": (lambda f: (f / "model.onnx").write_bytes(b""), "the file is empty"),
    "no tokenizer": (lambda f: [(f / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json")], "no tokenizer"),
    "no inference_model.json": (lambda f: (f / "inference_model.json").unlink(), "slmops cache add"),
}


def test_broken_folders_are_listed_invalid_with_their_reason():
    cache = store.location()
    for label, (breaker, _) in BROKEN.items():
        breaker(make_model(cache / "custom" / label.replace(" ", "-"), {"Name": label}))
    make_model(cache / "custom" / "good", {"Name": "good"})
    found = {model.path.name: model for model in store.scan()}
    assert found["good"].valid
    for label, (_, reason) in BROKEN.items():
        model = found[label.replace(" ", "-")]
        assert not model.valid and reason in model.reason, (label, model.reason)
    with pytest.raises(CacheError, match="is invalid: missing ONNX file"):
        store.find("no model.onnx")


ODD_FILES = {
    "inference_model.json": [
        "[]",
        '"text"',
        '{"Name": 5}',
        '{"Name": "x", "PromptTemplate": "text"}',
        '{"Name": "x", "ModelConfig": {"temperature": -1}}',
        '{"Name": "  "}',
        b"\xff\xfe{}",
    ],
    "genai_config.json": [
        "[]",
        '{"model": []}',
        '{"model": {"decoder": {"filename": 5}}}',
        '{"model": {"decoder": {"filename": "../outside.onnx"}}}',
        "",
    ],
}


def test_odd_file_contents_never_break_the_listing(tmp_path):
    cache = store.location()
    (cache / "outside.onnx").parent.mkdir(parents=True)
    write_onnx(cache / "outside.onnx")
    count = 0
    for filename, contents in ODD_FILES.items():
        for content in contents:
            folder = make_model(cache / "custom" / f"odd-{count}", {"Name": f"odd-{count}"})
            (folder / filename).write_bytes(content if isinstance(content, bytes) else content.encode())
            count += 1
    as_folder = make_model(cache / "custom" / f"odd-{count}")
    (as_folder / "inference_model.json").mkdir()
    found = store.scan()
    assert len(found) == count + 1 and not any(model.valid for model in found)
    assert all(model.reason for model in found)


def test_extra_keys_survive_a_rewrite(tmp_path):
    original = {
        **MISSION_JSON,
        "Publisher": "contoso",
        "PromptTemplate": {**MISSION_JSON["PromptTemplate"], "tool": "<tool>{Tool}</tool>", "x-note": "kept"},
        "ModelConfig": {**MISSION_JSON["ModelConfig"], "do_sample": True},
        "Tags": ["a", {"b": None}],
    }
    (tmp_path / "inference_model.json").write_text(json.dumps(original))
    InferenceModel.read(tmp_path).write(tmp_path)
    assert json.loads((tmp_path / "inference_model.json").read_text()) == original

    added = store.add(make_model(tmp_path / "src", original), name="renamed")
    assert json.loads((added.path / "inference_model.json").read_text()) == {**original, "Name": "renamed"}


# ---- names ------------------------------------------------------------------

PATH_LIKE = [
    "",
    " ",
    ".",
    "..",
    "../x",
    "x/..",
    "a/b",
    "a\\b",
    "/etc/passwd",
    "a\x00b",
    "a\nb",
    "%2e%2e",
    "..%2Fx",
    "a%2fb",
    "a%5Cb",
    "a%252Fb",
    "C:\\x",
    "C:x",
    "~root",
    ".hidden",
    "x" * 201,
]


@pytest.mark.parametrize("name", PATH_LIKE)
def test_path_like_names_are_refused_everywhere(name, tmp_path):
    make_model(store.location() / "custom" / "ok", {"Name": "ok"})
    for call in (
        lambda: store.find(name),
        lambda: store.remove(name),
        lambda: store.add(make_model(tmp_path / "src"), name=name),
    ):
        with pytest.raises(store.InvalidModelName):
            call()
    assert names(store.scan()) == ["ok"]
    assert sorted(p.name for p in (store.location() / "custom").iterdir()) == ["ok"]


def test_unknown_and_ambiguous_names_list_the_close_matches():
    cache = store.location()
    make_model(cache / "a" / "one", {"Name": "smollm2-int4"})
    make_model(cache / "b" / "one", {"Name": "SmolLM2-INT4"})
    make_model(cache / "c" / "one", {"Name": "smollm2-fp16"})
    with pytest.raises(ModelNotFound, match="ambiguous: 2 models") as ambiguous:
        store.find("smollm2-int4")
    assert str(cache / "a" / "one") in str(ambiguous.value)
    with pytest.raises(ModelNotFound, match="Close matches: .*smollm2-fp16"):
        store.find("smollm2-fp32")
    with pytest.raises(ModelNotFound, match="cache ls"):
        store.find("nothing-like-it")
    assert store.find("smollm2-FP16").path == cache / "c" / "one"


# ---- cache cd ---------------------------------------------------------------


def test_cache_cd_round_trip(tmp_path):
    default = store.location()
    assert default == settings.home() / "cache"
    make_model(default / "custom" / "first", {"Name": "first"})
    moved = store.set_location(tmp_path / "elsewhere" / "cache")
    assert moved == tmp_path / "elsewhere" / "cache" and moved.is_dir()
    assert store.location() == moved and settings.cache_dir() == moved
    assert json.loads(settings.config_path().read_text())["cache_dir"] == str(moved)
    assert store.scan() == []
    store.add(make_model(tmp_path / "second"))
    assert names(store.scan()) == ["second"]
    assert store.set_location(default) == default
    assert names(store.scan()) == ["first"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(CacheError, match="is a file"):
        store.set_location(tmp_path / "file")


# ---- add / remove -----------------------------------------------------------


def test_add_copies_and_writes_inference_model_json(tmp_path):
    source = make_model(tmp_path / "models" / "my-model" / "onnx")
    before = sorted(p.name for p in source.iterdir())
    entry = store.add(source.parent)  # the folder above the output is accepted too
    assert entry.name == "my-model" and entry.valid and entry.path == store.location() / "custom" / "my-model"
    assert sorted(p.name for p in source.iterdir()) == before  # the source is not touched
    written = InferenceModel.read(entry.path)
    assert written.generation_defaults() == {
        "max_length": 2048,
        "temperature": 0.7,
        "top_p": 0.9,
        "repetition_penalty": 1.1,
    }
    assert (
        written.render([{"role": "user", "content": "Hi"}]) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert not any(p.is_symlink() for p in entry.path.iterdir())


def test_add_without_a_known_chat_format_leaves_the_tokenizer_template(tmp_path):
    source = make_model(tmp_path / "plain", chat_template="{{ messages }}")
    (source / "tokenizer.json").write_text("{}")
    model = store.add(source).inference_model
    assert model.PromptTemplate is None and model.render([{"role": "user", "content": "x"}]) is None


def test_add_refuses_duplicates_unless_forced_and_links_on_request(tmp_path):
    first = store.add(make_model(tmp_path / "a", {"Name": "dup", "Version": "1"}))
    with pytest.raises(CacheError, match="--force"):
        store.add(make_model(tmp_path / "b", {"Name": "DUP", "Version": "2"}))
    assert store.find("dup").version == "1"
    linked = store.add(tmp_path / "b", force=True, link=True)
    assert (linked.name, linked.version, linked.valid) == ("DUP", "2", True)
    assert (linked.path / "model.onnx").is_symlink() and not (linked.path / "inference_model.json").is_symlink()
    assert linked.size_bytes > 0 and names(store.scan()) == ["DUP"]
    assert first.path == linked.path.parent / "dup" and not first.path.exists()
    store.remove("dup")
    assert store.scan() == [] and (tmp_path / "b" / "model.onnx").is_file()  # links removed, not targets


def test_add_failure_leaves_the_cache_unchanged(tmp_path):
    store.add(make_model(tmp_path / "keep", {"Name": "keep"}))
    snapshot = sorted(os.listdir(store.location() / "custom"))
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(CacheError, match="no genai_config.json"):
        store.add(bad)
    broken = make_model(tmp_path / "broken")
    (broken / "inference_model.json").write_text("{")
    with pytest.raises(CacheError, match="not valid JSON"):
        store.add(broken)
    dangling = make_model(tmp_path / "dangling")
    os.symlink(tmp_path / "missing-file", dangling / "zz-weights.bin")  # copied after the rest
    with pytest.raises(CacheError, match="Cannot copy .*zz-weights.bin"):
        store.add(dangling)
    assert sorted(os.listdir(store.location() / "custom")) == snapshot


def test_remove_deletes_one_model_and_refuses_unknown_names(tmp_path):
    store.add(make_model(tmp_path / "a", {"Name": "a"}))
    store.add(make_model(tmp_path / "b", {"Name": "b"}))
    broken = make_model(store.location() / "custom" / "c", {"Name": "c"})
    (broken / "model.onnx").unlink()
    assert store.remove("A").name == "a"
    assert store.remove("c").path == broken  # invalid models can be removed too
    assert names(store.scan()) == ["b"]
    with pytest.raises(ModelNotFound):
        store.remove("a")


def test_remove_never_deletes_outside_the_cache(tmp_path):
    outside = make_model(tmp_path / "outside", {"Name": "outside"})
    (store.location() / "custom").mkdir(parents=True)
    os.symlink(outside, store.location() / "custom" / "linked")
    assert store.find("outside").valid
    store.remove("outside")
    assert outside.is_dir() and (outside / "model.onnx").is_file()
    assert store.scan() == []


# ---- atomicity under a killed or concurrent `add` ----------------------------

ADD_SCRIPT = textwrap.dedent("""
    import os, shutil, sys, time
    from pathlib import Path
    from slmops.cache import store
    source, gate = Path(sys.argv[1]), Path(sys.argv[2])
    copy = shutil.copyfile  # what copytree's copy2 calls for each file
    def slow_copy(src, dst, **kwargs):
        result = copy(src, dst, **kwargs)
        if Path(src).name == "model.onnx":  # half-way: some files copied, others not
            gate.with_suffix(".reached").touch()
            while not gate.exists():
                time.sleep(0.01)
        time.sleep(0.02)  # a slow disk: leaves time to list while the copy runs
        return result
    shutil.copyfile = slow_copy
    store.add(source, name="incoming")
""")


def start_add(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    source = make_model(tmp_path / "incoming-src")
    for index in range(20):
        (source / f"extra-{index:02}.bin").write_bytes(os.urandom(1024))
    gate = tmp_path / "gate"
    process = subprocess.Popen([sys.executable, "-c", ADD_SCRIPT, str(source), str(gate)], env=os.environ.copy())
    deadline = time.monotonic() + 30
    while not gate.with_suffix(".reached").exists():
        assert process.poll() is None and time.monotonic() < deadline, "add never reached the copy"
        time.sleep(0.02)
    return process, gate


def test_add_killed_half_way_leaves_the_cache_as_before(tmp_path):
    store.add(make_model(tmp_path / "keep", {"Name": "keep"}))
    before = [model.to_dict() for model in store.scan()]
    process, _ = start_add(tmp_path)
    staging = [p for p in (store.location() / "custom").iterdir() if p.name.startswith(".adding-")]
    assert len(staging) == 1 and (staging[0] / "download.tmp").exists()  # half-copied, hidden
    assert [model.to_dict() for model in store.scan()] == before
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert [model.to_dict() for model in store.scan()] == before
    with pytest.raises(ModelNotFound):
        store.find("incoming")
    store.add(make_model(tmp_path / "next"))  # the next add sweeps what the killed one left
    assert not staging[0].exists()
    assert names(store.scan()) == ["keep", "next"]


def test_concurrent_listing_never_sees_a_half_entry(tmp_path):
    process, gate = start_add(tmp_path)
    expected_files = len(os.listdir(tmp_path / "incoming-src")) + 1  # plus inference_model.json
    seen_during, seen_after, staged = 0, 0, 0
    gate.touch()  # let the copy finish while we list as fast as we can
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        running = process.poll() is None
        staged += any(p.name.startswith(".adding-") for p in (store.location() / "custom").iterdir())
        for model in store.scan():
            assert model.valid, model.reason
            assert len(os.listdir(model.path)) == expected_files
            seen_after += not running
        seen_during += running
        if not running:
            break
    assert process.returncode == 0 and seen_during > 0 and staged > 0 and seen_after == 1
