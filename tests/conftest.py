import contextlib
import io
from pathlib import Path

import pytest

from tests import tiny


@pytest.fixture(autouse=True)
def slmops_home(tmp_path, monkeypatch):
    """Every test gets its own SLMOPS_HOME; the real ~/.slmops is never touched."""
    home = tmp_path / "slmops-home"
    monkeypatch.setenv("SLMOPS_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    return home


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory) -> Path:
    return tiny.build_tokenizer(tmp_path_factory.mktemp("tiny-tokenizer"))


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory, tiny_tokenizer):
    """tiny_model_factory(arch="llama", tie=True) -> a HF folder, built once per session."""
    built: dict = {}

    def make(arch: str = "llama", tie: bool = True) -> Path:
        key = (arch, tie)
        if key not in built:
            folder = tmp_path_factory.mktemp(f"tiny-{arch}-{'tied' if tie else 'untied'}")
            built[key] = tiny.build_model(folder, tiny_tokenizer, arch=arch, tie=tie)
        return built[key]

    return make


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_factory) -> Path:
    return tiny_model_factory("llama", tie=True)


@pytest.fixture(scope="session")
def tiny_base_llama(tmp_path_factory, tiny_llama) -> Path:
    """tiny_llama as a base model: the same weights, a tokenizer without a chat template."""
    import shutil

    folder = tmp_path_factory.mktemp("tiny-base") / "llama"
    shutil.copytree(tiny_llama, folder)
    return tiny.strip_chat_template(folder)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_llama) -> Path:
    """tiny_llama exported once to an onnxruntime-genai fp32 folder (context 512, EOS <|im_end|>).

    Shared by every test that needs a tiny ONNX model: read it, never write into it.
    """
    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    root = tmp_path_factory.mktemp("tiny-onnx")
    out, cache = root / "model", root / "builder-cache"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        options = parse_extra_options(None, str(tiny_llama), str(out), "fp32", "cpu", str(cache), [])
        create_model(None, str(tiny_llama), str(out), "fp32", "cpu", str(cache), **options)
    return out


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    from slmops.convert import embedded_model

    return embedded_model()


@pytest.fixture(scope="session")
def smollm2_int4(tmp_path_factory, smollm2_gguf) -> Path:
    """The embedded SmolLM2 converted to INT4 once per session (a model folder, not cached)."""
    from slmops.convert import convert

    output = tmp_path_factory.mktemp("smollm2") / "smollm2-135m-instruct-int4"
    convert(smollm2_gguf, output, precision="int4")
    return output
