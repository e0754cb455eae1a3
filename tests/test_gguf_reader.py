"""The GGUF reader's parts on their own: every ggml type, the embedded SmolLM2's tokenizer, the
architectures slmops does not map, and Llama 3's rope scaling recovered from llama.cpp's divisors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slmops.convert import convert
from slmops.convert.gguf_families import llama3_rope_scaling
from slmops.convert.gguf_file import dequantize, read_gguf
from slmops.convert.gguf_tokenizer import write_tokenizer
from slmops.errors import UnsupportedArchitecture

MULTILINGUAL = (
    "Příliš žluťoučký kůň úpěl ďábelské ódy. 你好，世界！こんにちは 😀🚀👩‍💻 "
    "def add(a, b):\n    return a + b  # 12345\n\tx = [1, 22, 333]\n  I'm here, it's 3.14 — naïve café."
)


def _dequantizable_types() -> list:
    import gguf

    kinds = gguf.GGMLQuantizationType
    return [k for k in kinds if k in (kinds.F32, kinds.F16) or k in gguf.quants._type_traits]


def _raw_tensor(kind, rows: int, columns: int) -> np.ndarray:
    """Bytes of a (rows, columns) tensor: gguf's own quantization of random data where gguf can
    quantize to the type, otherwise random blocks (any bit pattern is a valid block)."""
    import gguf

    rng = np.random.default_rng(int(kind))
    values = rng.standard_normal((rows, columns)).astype(np.float32)
    try:
        return gguf.quants.quantize(values, kind)
    except NotImplementedError:
        block, size = gguf.GGML_QUANT_SIZES[kind]
        return rng.integers(0, 256, (rows, columns // block * size), dtype=np.uint8)


@pytest.mark.parametrize("kind", _dequantizable_types(), ids=lambda kind: kind.name)
def test_every_ggml_type_is_dequantized_as_gguf_does(kind, tmp_path):
    import gguf

    rows, columns = 3, 512
    raw = _raw_tensor(kind, rows, columns)
    writer = gguf.GGUFWriter(str(tmp_path / "types.gguf"), "llama")
    writer.add_tensor("first.weight", np.arange(7, dtype=np.float32))  # a leading tensor moves the offsets
    writer.add_tensor("probe.weight", raw, raw_shape=raw.shape, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    gguf_file = read_gguf(tmp_path / "types.gguf")
    tensor = gguf_file.tensor("probe.weight")
    assert tensor is not None and tensor.shape == (rows, columns) and tensor.ggml_type == int(kind)
    expected = gguf.quants.dequantize(raw, kind).astype(np.float32)
    np.testing.assert_array_equal(dequantize(gguf_file, tensor), expected)


def smollm2_published_tokenizer(gguf_path: Path):
    """SmolLM2-135M-Instruct's tokenizer.json as published (byte-level BPE, single digits, 17 special
    tokens, no BOS added), filled with the vocabulary and merges the embedded GGUF carries."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    meta = read_gguf(gguf_path).metadata
    tokens = meta["tokenizer.ggml.tokens"]
    merges = [tuple(merge.split(" ")) for merge in meta["tokenizer.ggml.merges"]]
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens[:17]])
    return tokenizer


def test_embedded_smollm2_tokenizer_gives_the_published_ids(smollm2_gguf, tmp_path):
    from transformers import AutoTokenizer

    write_tokenizer(read_gguf(smollm2_gguf), tmp_path)
    ours = AutoTokenizer.from_pretrained(tmp_path)
    published = smollm2_published_tokenizer(smollm2_gguf)
    chat = ours.apply_chat_template(
        [{"role": "user", "content": MULTILINGUAL}], add_generation_prompt=True, tokenize=False
    )
    for text in (MULTILINGUAL, chat):
        assert ours(text)["input_ids"] == published.encode(text).ids
    assert ours.decode(ours(MULTILINGUAL)["input_ids"]) == MULTILINGUAL
    assert chat.startswith("<|im_start|>system\n") and ours(chat)["input_ids"][0] == 1  # <|im_start|>, no BOS
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["add_bos_token"] is False


def test_an_architecture_nobody_reads_is_refused_in_one_line(tmp_path):
    import gguf

    path = tmp_path / "bert.gguf"
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedArchitecture) as error:
        convert(path, tmp_path / "out", precision="fp32", log_level=0)
    message = str(error.value)
    assert "'bert' is not supported" in message and "\n" not in message
    assert "gemma3" in message and "phi3" in message and "lfm2" in message  # mapped ones, then transformers'
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "scaling",
    [
        {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        {"factor": 16.0, "low_freq_factor": 1.0, "high_freq_factor": 2.0, "original_max_position_embeddings": 4096},
    ],
)
@pytest.mark.parametrize("rope_dim", [16, 64, 128])
def test_llama3_rope_scaling_comes_back_from_the_divisors(scaling, rope_dim):
    """llama.cpp stores Llama 3's rope scaling only as per-frequency divisors (rope_freqs); the
    parameters recovered from them give transformers' own frequencies back."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    def inverse_frequencies(parameters: dict) -> np.ndarray:
        config = LlamaConfig(
            hidden_size=4 * rope_dim,
            num_attention_heads=4,
            head_dim=rope_dim,
            max_position_embeddings=131072,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, **parameters},
        )
        return ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")[0].double().numpy()

    plain = 1 / 500000.0 ** (np.arange(0, rope_dim, 2) / rope_dim)
    divisors = (plain / inverse_frequencies(scaling)).astype(np.float32)  # what llama.cpp writes
    recovered = llama3_rope_scaling(divisors.astype(np.float64), 500000.0, rope_dim)
    assert recovered.pop("rope_type") == "llama3"
    np.testing.assert_allclose(inverse_frequencies(recovered), inverse_frequencies(scaling), rtol=1e-5)
    if rope_dim == 128:  # enough frequencies in the smoothed band to pin every parameter down
        assert recovered == pytest.approx(scaling)


def test_end_of_turn_tokens_end_generation_when_they_are_control_tokens():
    from slmops.convert.gguf_file import GGUFFile
    from slmops.convert.gguf_source import end_of_generation_ids

    types = [3, 3, 1, 1, 3]  # <pad> <eos> a b <end_of_turn>
    gemma = GGUFFile(Path("g.gguf"), {"tokenizer.ggml.token_type": types, "tokenizer.ggml.eos_token_id": 1})
    assert end_of_generation_ids(gemma) == 1
    gemma.metadata["tokenizer.ggml.eot_token_id"] = 4
    assert end_of_generation_ids(gemma) == [1, 4]
    gemma.metadata["tokenizer.ggml.eot_token_id"] = 3  # Gemma 1's converter names id 107 whatever it is
    assert end_of_generation_ids(gemma) == 1
