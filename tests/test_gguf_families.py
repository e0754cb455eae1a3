"""GGUF, every family: tiny random HF models written as GGUF by llama.cpp's own converter, read back
by slmops, and held to one contract (the same weights, config, tokenizer ids and greedy tokens).

The GGUFs come from llama.cpp's `convert_hf_to_gguf.py` (tests/llama_cpp_convert.py), so the
reader is checked against the real writer, not against a writer sharing its mistakes.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from slmops.convert import convert
from slmops.convert.gguf_source import gguf_to_hf
from tests import in_process, llama_cpp_convert

pytestmark = pytest.mark.slow

# One tiny config per family: 2 layers (SmolLM3: 4, so its every-4th NoPE layer exists; Gemma 3: 6,
# so one global layer follows five sliding ones), the family's real head layout (GQA ratio,
# head_dim, tied or untied), and its own features (soft-capping, sliding windows, multipliers).
FAMILIES: dict[str, dict] = {
    "llama": {  # Llama 3.2: GQA 4:1, tied, Llama 3 rope scaling
        "architecture": "LlamaForCausalLM",
        "tokenizer": "llama-bpe",
        "config": {
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "tie_word_embeddings": True,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        },
    },
    "smollm2": {  # SmolLM2-135M: a llama with 3:1 GQA and StarCoder-style digit splitting
        "architecture": "LlamaForCausalLM",
        "tokenizer": "smollm",
        "config": {"num_attention_heads": 3, "num_key_value_heads": 1, "hidden_size": 48, "tie_word_embeddings": True},
    },
    "smollm3": {
        "architecture": "SmolLM3ForCausalLM",
        "tokenizer": "llama-bpe",
        "config": {"num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 1, "rope_theta": 5e6},
    },
    "mistral": {  # Mistral 7B v0.3: GQA 4:1, untied, SentencePiece with a leading space
        "architecture": "MistralForCausalLM",
        "read_as": "LlamaForCausalLM",  # llama.cpp writes Mistral as a llama GGUF
        "tokenizer": "spm-llama",
        "config": {
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "tie_word_embeddings": False,
            "sliding_window": None,
        },
    },
    "qwen2": {  # Qwen2.5-0.5B: 7:1 GQA in life, q/k/v biases, tied
        "architecture": "Qwen2ForCausalLM",
        "tokenizer": "qwen2",
        "config": {"num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": True},
    },
    "qwen3": {  # Qwen3-0.6B: head_dim larger than hidden/heads, q/k norms
        "architecture": "Qwen3ForCausalLM",
        "tokenizer": "qwen2",
        "config": {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "tie_word_embeddings": True},
    },
    "gemma": {  # Gemma 2B: multi-query attention, head_dim 2x hidden/heads
        "architecture": "GemmaForCausalLM",
        "tokenizer": "spm-gemma",
        "config": {"num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 32},
    },
    "gemma2": {  # Gemma 2 2B: soft-capping, alternating sliding/global layers
        "architecture": "Gemma2ForCausalLM",
        "tokenizer": "spm-gemma",
        "config": {
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "sliding_window": 8,
            "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0,
        },
    },
    "gemma3": {  # Gemma 3 1B: MQA, q/k norms, 5 sliding layers then a global one, two rope bases
        "architecture": "Gemma3ForCausalLM",
        "tokenizer": "spm-gemma",
        "config": {
            "num_hidden_layers": 6,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "query_pre_attn_scalar": 32,
            "sliding_window": 8,
            "rope_theta": 1e6,
            "rope_local_base_freq": 1e4,
        },
    },
    "phi3": {  # Phi-3.5-mini: full multi-head attention, fused qkv and gate_up, untied
        "architecture": "Phi3ForCausalLM",
        "tokenizer": "spm-llama",
        "config": {"num_attention_heads": 4, "num_key_value_heads": 4, "tie_word_embeddings": False},
    },
    "phi4-mini": {  # Phi-4-mini: GQA 3:1, tied, 3/4 of each head rotated, long/short rope factors, GPT-4o's BPE
        "architecture": "Phi3ForCausalLM",
        "tokenizer": "gpt-4o",
        "config": {
            # head_dim 64: onnxruntime's attention needs the rotated half (24 here) a multiple of 8.
            "hidden_size": 192,
            "num_attention_heads": 3,
            "num_key_value_heads": 1,
            "tie_word_embeddings": True,
            "partial_rotary_factor": 0.75,
            "original_max_position_embeddings": 256,
            "rope_scaling": {
                "rope_type": "longrope",
                "long_factor": [1.0 + 0.15 * i for i in range(24)],
                "short_factor": [1.0 + 0.02 * i for i in range(24)],
            },
        },
    },
    "granite": {  # Granite 3.3 2B: GQA 4:1, tied, the four multipliers
        "architecture": "GraniteForCausalLM",
        "tokenizer": "refact",
        "config": {
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "tie_word_embeddings": True,
            "embedding_multiplier": 12.0,
            "attention_multiplier": 0.0625,
            "residual_multiplier": 0.22,
            "logits_scaling": 8.0,
        },
    },
    "olmo": {  # OLMo 1B: full multi-head attention, norms without weights, a base model's tokenizer
        "architecture": "OlmoForCausalLM",
        "tokenizer": "olmo",
        "config": {"num_attention_heads": 4, "num_key_value_heads": 4, "tie_word_embeddings": True},
    },
}
COMMON_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "max_position_embeddings": 512,
    "initializer_range": 0.2,
}
# The builder stops on the Hugging Face configs transformers 5 writes for these families; the
# fix belongs to the HF path (issue 13, "One contract per architecture"), not to the GGUF reader.
TEXT = (
    "Příliš žluťoučký kůň úpěl ďábelské ódy. 你好，世界！こんにちは 😀🚀 "
    "def add(a, b):\n    return a + b  # 12345\n\tx = [1, 22, 333]\n  The quick brown fox's tail."
)
TRAINING_TEXT = TEXT + (
    " Convert, cache, run, serve and benchmark small language models on a CPU. Hello world, hello model. "
    "Život je krásný. 世界很大。 for i in range(10): print(i) 2024-11-29 "
)
CHAT = [{"role": "user", "content": "Ahoj, jak se máš? 你好"}]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\n' + message['content'] "
    "+ '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
LLAMA2_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endfor %}"
)
GREEDY_STEPS = 16

# --- tokenizers -------------------------------------------------------------------------------

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _pre_tokenizer(kind: str):
    """The pre-tokenizer of the published tokenizer.json each kind imitates."""
    from tokenizers import Regex, pre_tokenizers

    if kind in ("llama-bpe", "qwen2", "gpt-4o"):
        split = {"llama-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT, "gpt-4o": _GPT4O_SPLIT}[kind]
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    if kind in ("smollm", "refact"):  # SmolLM2, Granite 3 (StarCoder's tokenizer)
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    return pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-NeoX (OLMo)


def build_bpe_tokenizer(folder: Path, kind: str) -> Path:
    """A byte-level BPE tokenizer laid out like the family's published one (Llama 3 adds BOS)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>"]
    tokenizer = Tokenizer(models.BPE(ignore_merges=kind == "llama-bpe"))
    tokenizer.pre_tokenizer = _pre_tokenizer(kind)
    if kind == "qwen2":
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([TRAINING_TEXT] * 20, trainer)
    bos = None
    if kind == "llama-bpe":
        bos = "<|begin_of_text|>"
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, tokenizer.token_to_id(bos))]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=bos,
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = None if kind == "olmo" else CHATML  # OLMo stands for a base model: no template
    fast.save_pretrained(folder)
    if kind == "gpt-4o":  # Phi-4-mini's class name, which tells llama.cpp's Phi-3 converter to read BPE
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "GPT2Tokenizer"}))
    return folder


def build_sentencepiece_tokenizer(folder: Path, kind: str) -> Path:
    """A SentencePiece BPE model trained here, wrapped as a Gemma (no leading space) or Llama tokenizer."""
    import sentencepiece
    import transformers

    gemma = kind == "spm-gemma"
    if gemma:  # Gemma's layout: <pad> <eos> <bos> <unk> <mask>, then the chat-turn markers
        pieces = {"pad_id": 0, "eos_id": 1, "bos_id": 2, "unk_id": 3, "control_symbols": ["<mask>"]}
        pieces |= {"pad_piece": "<pad>", "eos_piece": "<eos>", "bos_piece": "<bos>", "unk_piece": "<unk>"}
        pieces["user_defined_symbols"] = ["<start_of_turn>", "<end_of_turn>"]
    else:  # Llama 2 / Mistral / Phi-3: <unk> <s> </s>
        pieces = {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1, "user_defined_symbols": ["[INST]", "[/INST]"]}
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([TRAINING_TEXT] * 50),
        model_writer=model,
        vocab_size=480,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        add_dummy_prefix=not gemma,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        minloglevel=2,
        **pieces,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    cls = transformers.GemmaTokenizer if gemma else transformers.LlamaTokenizer
    tokenizer = cls.from_pretrained(str(folder), add_bos_token=True)
    tokenizer.chat_template = GEMMA_TEMPLATE if gemma else LLAMA2_TEMPLATE
    if gemma:  # as Gemma's hub checkpoints mark them: control tokens of the chat format
        for token in ("<start_of_turn>", "<end_of_turn>"):
            tokenizer.added_tokens_decoder[tokenizer.convert_tokens_to_ids(token)].special = True
    tokenizer.save_pretrained(folder)
    _write_added_tokens_decoder(folder, tokenizer)
    return folder


def _write_added_tokens_decoder(folder: Path, tokenizer) -> None:
    """tokenizer_config.json's added_tokens_decoder, as the hub's checkpoints carry it (llama.cpp's
    converter reads special tokens of a SentencePiece vocabulary from there)."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["added_tokens_decoder"] = {
        str(index): {"content": token.content, "special": token.special, "normalized": False}
        for index, token in tokenizer.added_tokens_decoder.items()
    }
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    kinds = {spec["tokenizer"] for spec in FAMILIES.values()}
    return {
        kind: (build_sentencepiece_tokenizer if kind.startswith("spm") else build_bpe_tokenizer)(root / kind, kind)
        for kind in sorted(kinds)
    }


# --- models and their GGUFs ---------------------------------------------------------------------


def build_model(folder: Path, family: str, tokenizer_dir: Path) -> Path:
    """The family's tiny random model with its tokenizer; norms and biases randomised too, so that
    every conversion llama.cpp applies to them (Gemma's 1 + w, Q/K bias order) shows."""
    import torch
    import transformers

    spec = FAMILIES[family]
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    special = {f"{key}_token_id": _token_id(tokenizer, f"{key}_token") for key in ("bos", "eos", "pad")}
    model_class = getattr(transformers, spec["architecture"])
    config = model_class.config_class(**{**COMMON_CONFIG, **spec["config"]}, **special, vocab_size=len(tokenizer))
    torch.manual_seed(0)
    model = model_class(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 1:
                parameter.add_(0.3 * torch.randn_like(parameter))
    model.save_pretrained(folder)
    for item in tokenizer_dir.iterdir():
        shutil.copy(item, folder / item.name)
    return folder


def _token_id(tokenizer, attribute: str) -> int | None:
    token = getattr(tokenizer, attribute)
    return tokenizer.convert_tokens_to_ids(token) if token else None


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizers) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {
        family: build_model(root / family, family, tokenizers[spec["tokenizer"]]) for family, spec in FAMILIES.items()
    }


def build_lfm2(folder: Path, tokenizer_dir: Path) -> Path:
    """A tiny LFM2 (convolution and attention layers): a family slmops leaves to transformers' GGUF loader."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    config = transformers.Lfm2Config(
        **{**COMMON_CONFIG, "num_hidden_layers": 4},
        num_attention_heads=4,
        num_key_value_heads=2,
        layer_types=["conv", "full_attention", "conv", "full_attention"],
        vocab_size=len(tokenizer),
        eos_token_id=_token_id(tokenizer, "eos_token"),
        pad_token_id=_token_id(tokenizer, "pad_token"),
    )
    torch.manual_seed(0)
    transformers.Lfm2ForCausalLM(config).eval().save_pretrained(folder)
    for item in tokenizer_dir.iterdir():
        shutil.copy(item, folder / item.name)
    return folder


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory, models, tokenizers) -> dict[tuple[str, str], Path]:
    """(family, "f32" | "q8_0") -> the GGUF llama.cpp's converter writes; ("lfm2", "f32") too."""
    root = tmp_path_factory.mktemp("ggufs")
    jobs = []
    for family, folder in models.items():
        kind = FAMILIES[family]["tokenizer"]
        for outtype in ("f32", "q8_0"):
            jobs.append((folder, root / f"{family}-{outtype}.gguf", outtype, None if kind.startswith("spm") else kind))
    lfm2 = build_lfm2(root / "lfm2", tokenizers["llama-bpe"])
    jobs.append((lfm2, root / "lfm2-f32.gguf", "f32", "llama-bpe"))
    llama_cpp_convert.convert_to_gguf(jobs)
    return {(Path(folder).name, outtype): outfile for folder, outfile, outtype, _ in jobs}


def _torch_logits(folder: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def _prompt_ids(folder: Path) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)(TEXT)["input_ids"][:24]


# --- the contract -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_gguf_gives_back_the_weights_config_and_tokenizer(family, models, ggufs, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    source = models[family]
    notes: list[str] = []
    config = gguf_to_hf(ggufs[family, "f32"], tmp_path / "hf", notes=notes)
    spec = FAMILIES[family]
    assert config["architectures"] == [spec.get("read_as", spec["architecture"])] and notes == []

    ids = _prompt_ids(source)
    original, read_back = _torch_logits(source, ids), _torch_logits(tmp_path / "hf", ids)
    np.testing.assert_allclose(read_back, original, atol=2e-4, rtol=1e-4)

    expected, actual = AutoTokenizer.from_pretrained(source), AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert actual(TEXT)["input_ids"] == expected(TEXT)["input_ids"]
    assert actual.decode(actual(TEXT)["input_ids"], skip_special_tokens=True) == TEXT
    if expected.chat_template:
        rendered = expected.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
        assert actual.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False) == rendered
        assert (
            actual(rendered, add_special_tokens=False)["input_ids"]
            == expected(rendered, add_special_tokens=False)["input_ids"]
        )
    else:
        assert actual.chat_template is None
    hf_config = AutoConfig.from_pretrained(source)
    assert AutoConfig.from_pretrained(tmp_path / "hf").num_key_value_heads == hf_config.num_key_value_heads


@pytest.mark.parametrize("family", FAMILIES)
def test_q8_0_gguf_reads_back_close_to_the_original(family, models, ggufs, tmp_path):
    gguf_to_hf(ggufs[family, "q8_0"], tmp_path / "hf")
    ids = _prompt_ids(models[family])
    original, read_back = _torch_logits(models[family], ids), _torch_logits(tmp_path / "hf", ids)
    assert (read_back.argmax(-1) == original.argmax(-1)).mean() >= 0.75
    assert np.corrcoef(read_back.ravel(), original.ravel())[0, 1] > 0.99


def _greedy(folder: Path, prompt: list[int], steps: int = GREEDY_STEPS) -> list[int]:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    length = len(prompt) + steps
    params.set_search_options(do_sample=False, max_length=length, min_length=length)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    tokens = []
    while not generator.is_done() and len(tokens) < steps:
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


def _top1_agreement(folder: Path, prompt: list[int], reference: list[int]) -> int:
    """How many of `reference`'s tokens the model predicts itself when fed the ones before each."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + len(reference) + 1)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt + reference)
    logits = np.array(generator.get_output("logits"))[0]
    predicted = logits[len(prompt) - 1 : -1].argmax(-1)
    return int((predicted == np.array(reference)).sum())


def _onnx_tokenizer_ids(folder: Path, text: str) -> list[int]:
    import onnxruntime_genai as og

    return [int(i) for i in og.Tokenizer(og.Model(str(folder))).encode(text)]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gguf_converts_like_the_hf_folder(family, models, ggufs, tmp_path):
    """slmops convert --precision fp32 of the GGUF decodes the HF folder's 16 greedy tokens (F32),
    or predicts at least 12 of them fed the ones before (Q8_0); its tokenizer gives the same ids."""
    source = models[family]
    outputs = {}
    for name, path in (("hf", source), ("f32", ggufs[family, "f32"]), ("q8_0", ggufs[family, "q8_0"])):
        outputs[name] = tmp_path / name
        convert(path, outputs[name], precision="fp32", log_level=0)
    prompt = _prompt_ids(source)
    reference = _greedy(outputs["hf"], prompt)
    assert _greedy(outputs["f32"], prompt) == reference
    assert _top1_agreement(outputs["q8_0"], prompt, reference) >= 12
    assert _onnx_tokenizer_ids(outputs["f32"], TEXT) == _onnx_tokenizer_ids(outputs["hf"], TEXT)


def test_an_architecture_slmops_does_not_map_goes_through_transformers(ggufs, tmp_path):
    """LFM2 is not one of slmops' GGUF families: transformers' GGUF loader reads it, with a note."""
    source = ggufs["lfm2", "f32"]
    reference = tmp_path / "from-hf"
    convert(source.parent / "lfm2", reference, precision="fp32", log_level=0)
    report = convert(source, tmp_path / "from-gguf", precision="fp32", log_level=0)
    assert report.notes[0] == "GGUF architecture 'lfm2' was read by transformers' GGUF loader"
    prompt = _prompt_ids(source.parent / "lfm2")
    assert _greedy(tmp_path / "from-gguf", prompt) == _greedy(reference, prompt)


def test_a_base_model_completes_text_and_refuses_chats(ggufs, tmp_path):
    """OLMo's GGUF has no tokenizer.chat_template: `model run` completes the raw text and says why;
    `serve` answers /v1/completions and gives chat requests a clear 400."""
    import subprocess
    import sys

    from fastapi.testclient import TestClient

    from slmops.server import ServerConfig, create_app

    folder = tmp_path / "olmo-base"
    report = convert(ggufs["olmo", "f32"], folder, precision="fp32", log_level=0)
    assert "the model has no chat template: inference_model.json has no PromptTemplate" in report.notes
    command = [
        sys.executable,
        "-m",
        "slmops",
        "model",
        "run",
        str(folder),
        "--prompt",
        "The capital of",
        "--max-tokens",
        "4",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip() == "olmo-base has no chat template (a base model): it completes the text it is given."

    with TestClient(create_app(ServerConfig(load_wait=60, parallel=1, threads=1), [str(folder)])) as client:
        in_process.wait_healthy(client)
        completion = client.post(
            "/v1/completions", json={"model": "olmo-base", "prompt": "The capital of", "max_tokens": 4}
        )
        assert completion.status_code == 200 and completion.json()["usage"]["completion_tokens"] == 4
        chat = client.post("/v1/chat/completions", json={"model": "olmo-base", "messages": CHAT, "max_tokens": 4})
        assert chat.status_code == 400
        assert chat.json()["error"]["message"].startswith("olmo-base has no chat template (a base model)")
