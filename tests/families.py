"""One tiny random model per architecture family users bring, built offline.

Each family keeps the head layout of a real checkpoint (its GQA ratio, head_dim rule,
tied or untied embeddings, norm and rope conventions) at 2 layers and a hidden size of
about 64, with its own tokenizer kind, special tokens and a minimal chat template in
the real template's format. `build(folder, style)` writes a Hugging Face folder with
``config.json`` as transformers 5 writes it (``style="tf5"``) or as the checkpoints on
the hub were written by transformers 4 (``style="tf4"``: ``rope_theta`` and
``rope_scaling`` at the top level, no ``rope_parameters``, and no ``layer_types``
where the checkpoints predate it); the weights are the same in both. SentencePiece
families ship ``tokenizer.model`` too, and a tokenizer.json in the format of their hub
checkpoints.

    from tests.families import FAMILIES
    folder = FAMILIES["gemma3"].build(tmp_path / "gemma3", "tf4")
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

STYLES = ("tf5", "tf4")
TRAINING_TEXT = (
    "The quick brown fox jumps over the lazy dog. Hello world, this is a test of a tiny tokenizer. "
    "Convert, cache, run, serve, benchmark and validate small language models on a CPU. "
    "Příliš žluťoučký kůň úpěl ďábelské ódy. 😀 你好，世界。 مرحبا بالعالم def main(): return 42"
)
VOCAB_SIZE = 384  # tokens the tokenizers are trained to, special tokens included
SEED = 0

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{{- bos_token }}{% for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
MISTRAL = (
    "{{- bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{- '[INST] ' + message['content'] + '[/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{- ' ' + message['content'] + eos_token }}{% else %}"
    "{{- raise_exception('Only user and assistant roles are supported') }}{% endif %}{% endfor %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
GEMMA3 = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}"
    "{% endif %}{% for message in loop_messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n'"
    " + (first_user_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
    "{{ '<|system|>\n' + message['content'] + '<|end|>\n' }}{% elif message['role'] == 'user' %}"
    "{{ '<|user|>\n' + message['content'] + '<|end|>\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' + message['content'] + '<|end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
PHI4 = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '<|im_sep|>' + message['content'] + '<|im_end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}"
)
PHI4_MINI = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)
GRANITE = (
    "{%- for message in messages %}{{- '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + message['content']"
    " + '<|end_of_text|>\n' }}{%- endfor %}{%- if add_generation_prompt %}"
    "{{- '<|start_of_role|>assistant<|end_of_role|>' }}{%- endif %}"
)
TULU = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<|system|>\n' + message['content'] + '\n' }}{% elif message['role'] == 'user' %}"
    "{{ '<|user|>\n' + message['content'] + '\n' }}{% elif message['role'] == 'assistant' %}"
    "{% if not loop.last %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
    "{% else %}{{ '<|assistant|>\n' + message['content'] + eos_token }}{% endif %}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}{% endfor %}"
)


@dataclass(frozen=True)
class Tokens:
    """A family's tokenizer: its kind, special tokens and whether encoding adds BOS.

    ``kind`` is "bpe" (byte-level BPE, as GPT-2, Llama 3, Qwen and SmolLM ship it) or
    "spm" (a SentencePiece BPE model with byte fallback, shipped as tokenizer.model
    too, as Llama 2, Mistral, Phi-3 and Gemma ship it).
    """

    kind: str
    bos: str | None
    eos: str
    specials: tuple[str, ...]  # chat markers, after the bos/eos/unk/pad tokens
    add_bos: bool = False
    unk: str | None = None
    pad: str | None = None
    stops: tuple[str, ...] = ()  # tokens besides eos that end a turn (generation_config's eos list)


# Gemma 1, 2 and 3 share one SentencePiece layout: BOS first, a turn ends at <end_of_turn>.
GEMMA_TOKENS = Tokens(
    "spm",
    bos="<bos>",
    eos="<eos>",
    specials=("<start_of_turn>", "<end_of_turn>"),
    add_bos=True,
    unk="<unk>",
    pad="<pad>",
    stops=("<end_of_turn>",),
)


@dataclass(frozen=True)
class Family:
    """A tiny model of one architecture family.

    Attributes:
        name: the family's key in FAMILIES.
        model_class: the transformers class, e.g. "Gemma3ForCausalLM".
        config_class: its config class, e.g. "Gemma3TextConfig".
        layout: the real checkpoint whose head layout the tiny model keeps.
        config: tiny config keywords (transformers 5 names) besides the shared ones.
        tokens: the tokenizer.
        chat_template: a minimal Jinja template in the real template's format.
        accepts_system: whether the template takes a system message (Gemma 3's opens the first user turn
            with it; Gemma 1 and 2's and this Mistral one refuse it).
        embedding_scale: shrinks the random embedding where the model scales it up by sqrt(hidden)
            (Gemma 2 and 3): at full size the last token's embedding outweighs both layers, and
            greedy decoding repeats one token.
        seed: torch's seed for the random weights, chosen so that torch's greedy answer to
            tests/test_families.py's chat is varied and holds no stop token.
        tf4_extra: keys transformers 4 wrote for this family's checkpoints.
        tf4: rewrites the config.json transformers 5 wrote, given its rope_parameters, as
            transformers 4 wrote it (default: rope_theta and rope_scaling at the top level).
    """

    name: str
    model_class: str
    config_class: str
    layout: str
    config: dict
    tokens: Tokens
    chat_template: str
    accepts_system: bool = True
    embedding_scale: float = 1.0
    seed: int = SEED
    tf4_extra: dict = field(default_factory=dict)
    tf4: Callable[[dict, dict], dict] | None = None

    def build(self, folder: Path, style: str = "tf5") -> Path:
        """Write the HF folder: weights, config.json in `style`, generation_config.json, tokenizer."""
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tokenizer = build_tokenizer(folder, self.tokens, self.chat_template)
        model = self.model(tokenizer)
        model.save_pretrained(folder)
        if style == "tf4":
            path = folder / "config.json"
            written = json.loads(path.read_text(encoding="utf-8"))
            path.write_text(json.dumps(self.as_tf4(written), indent=2) + "\n", encoding="utf-8")
        return folder

    def model(self, tokenizer):
        """The tiny random model, the same for every call (seeded), in float32."""
        import torch
        import transformers

        ids = tokenizer.convert_tokens_to_ids
        shared = {
            "vocab_size": len(tokenizer),
            "num_hidden_layers": 2,
            "max_position_embeddings": 512,
            # Larger than the usual 0.02, so that greedy tokens win by clear margins, not by rounding.
            "initializer_range": 0.2,
            "bos_token_id": ids(self.tokens.bos) if self.tokens.bos else None,
            "eos_token_id": [ids(token) for token in (self.tokens.eos, *self.tokens.stops)],
            "pad_token_id": ids(self.tokens.pad) if self.tokens.pad else None,
            "architectures": [self.model_class],
        }
        config = getattr(transformers, self.config_class)(**{**shared, **self.config})
        torch.manual_seed(self.seed)
        model = getattr(transformers, self.model_class)(config).eval()
        _randomize_norms_and_biases(model, self.seed)
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(self.embedding_scale)
        return model

    def as_tf4(self, config: dict) -> dict:
        """config.json as transformers 4 wrote it for this family's checkpoints."""
        config = dict(config)
        rope = config.pop("rope_parameters", None) or {}
        config.pop("dtype", None)
        config["torch_dtype"] = "float32"
        config["transformers_version"] = "4.51.3"
        if self.tf4 is not None:
            config = self.tf4(config, rope)
        else:
            config.update(_flat_rope(rope))
        config.update(self.tf4_extra)
        return {key: config[key] for key in sorted(config)}


def _flat_rope(rope: dict) -> dict:
    """rope_parameters as the top-level rope_theta and rope_scaling of transformers 4."""
    rope = dict(rope)
    flat = {"rope_theta": rope.pop("rope_theta", 10000.0)}
    partial = rope.pop("partial_rotary_factor", 1.0)
    if partial != 1.0:
        flat["partial_rotary_factor"] = partial
    flat["rope_scaling"] = None if rope.get("rope_type", "default") == "default" else rope
    return flat


def _without_layer_types(config: dict, rope: dict) -> dict:
    config.pop("layer_types", None)
    config.update(_flat_rope(rope))
    return config


def _gemma3_tf4(config: dict, rope: dict) -> dict:
    # transformers 4.50 wrote the local theta apart and the layer pattern as one number.
    pattern = config.pop("layer_types").index("full_attention") + 1
    config.pop("_sliding_window_pattern", None)  # transformers 5's own copy of the old key
    config.pop("use_bidirectional_attention", None)
    config.update(_flat_rope(rope["full_attention"]))
    config["rope_local_base_freq"] = rope["sliding_attention"]["rope_theta"]
    config["sliding_window_pattern"] = pattern
    return config


def _phi3_tf4(config: dict, rope: dict) -> dict:
    # Phi-3.5 wrote its longrope settings under rope_scaling with the old "type" key.
    flat = _flat_rope(rope)
    scaling = flat["rope_scaling"]
    if scaling is not None:
        flat["rope_scaling"] = {"type": scaling.pop("rope_type"), **scaling}
        flat["rope_scaling"].pop("original_max_position_embeddings", None)
        flat["rope_scaling"].pop("factor", None)
    config.update(flat)
    return config


def _randomize_norms_and_biases(model, seed: int) -> None:
    """Norm weights and biases start at constants; random ones make their conventions matter.

    A checkpoint that stores RMSNorm weights as offsets (Gemma) or has none (OLMo) is only
    told apart from one that does not when the weights are not all ones or zeros.
    """
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))


def build_tokenizer(folder: Path, tokens: Tokens, chat_template: str):
    """Train the family's tiny tokenizer on TRAINING_TEXT and save it into `folder`."""
    tokenizer = _bpe(tokens) if tokens.kind == "bpe" else _spm(folder, tokens)
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)
    if tokens.kind == "spm" and tokens.bos != "<bos>":
        _as_hub_llama2_tokenizer(folder / "tokenizer.json")
    _drop_key(folder / "tokenizer_config.json", "vocab_file")  # an absolute path to this folder
    return tokenizer


def _drop_key(path: Path, key: str) -> None:
    config = json.loads(path.read_text(encoding="utf-8"))
    config.pop(key, None)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _as_hub_llama2_tokenizer(path: Path) -> None:
    """The tokenizer.json Llama 2, Mistral and Phi-3 ship: a leading "▁" added by the normalizer.

    transformers 5 converts tokenizer.model to a Metaspace pre-tokenizer that adds "▁" only
    at the start of the text; the checkpoints on the hub add it to every piece of text
    between special tokens, and keep that when transformers 5 saves them again.
    """
    config = json.loads(path.read_text(encoding="utf-8"))
    config["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        ],
    }
    config["pre_tokenizer"] = None
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def _bpe(tokens: Tokens):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    named = [t for t in (tokens.bos, tokens.eos, tokens.unk, tokens.pad) if t]
    specials = list(dict.fromkeys([*named, *tokens.specials]))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([TRAINING_TEXT] * 20, trainer)
    if tokens.add_bos:
        bos_id = tokenizer.token_to_id(tokens.bos)
        tokenizer.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(single=f"{tokens.bos} $A", special_tokens=[(tokens.bos, bos_id)]),
            ]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=tokens.bos,
        eos_token=tokens.eos,
        unk_token=tokens.unk,
        pad_token=tokens.pad,
    )


def _spm(folder: Path, tokens: Tokens):
    """A SentencePiece BPE model (saved as tokenizer.model) and its transformers tokenizer."""
    import sentencepiece
    import transformers

    gemma = tokens.bos == "<bos>"
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([TRAINING_TEXT] * 50),
        model_writer=model,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        hard_vocab_limit=False,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        add_dummy_prefix=not gemma,  # Gemma's model adds no leading space; Llama 2's does
        user_defined_symbols=list(tokens.specials),
        # Gemma numbers pad, eos, bos, unk from 0; Llama 2 unk, bos, eos and has no pad.
        **(
            {"pad_id": 0, "eos_id": 1, "bos_id": 2, "unk_id": 3, "pad_piece": "<pad>", "eos_piece": "<eos>"}
            | {"bos_piece": "<bos>", "unk_piece": "<unk>"}
            if gemma
            else {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1}
        ),
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    cls = transformers.GemmaTokenizer if gemma else transformers.LlamaTokenizer
    return cls.from_pretrained(folder, add_bos_token=tokens.add_bos, legacy=False)


CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
LLAMA3_TOKENS = Tokens(
    "bpe",
    bos="<|begin_of_text|>",
    eos="<|eot_id|>",
    specials=("<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"),
    add_bos=True,
    stops=("<|end_of_text|>",),
)
# Qwen 2 and 3: ChatML turns, no BOS, <|endoftext|> pads and ends a text.
QWEN_TOKENS = Tokens(
    "bpe",
    bos=None,
    eos="<|im_end|>",
    specials=("<|endoftext|>", "<|im_start|>"),
    pad="<|endoftext|>",
    stops=("<|endoftext|>",),
)

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            "llama",
            "LlamaForCausalLM",
            "LlamaConfig",
            "Llama-3.2-1B-Instruct: 32 heads over 8 KV heads, head_dim = hidden / heads, tied, llama3 rope scaling",
            dict(
                hidden_size=64,
                intermediate_size=128,
                num_attention_heads=4,
                num_key_value_heads=1,
                tie_word_embeddings=True,
                rms_norm_eps=1e-5,
                max_position_embeddings=16384,  # above the llama3 rope's original 8192
                rope_parameters={
                    "rope_type": "llama3",
                    "rope_theta": 500000.0,
                    "factor": 32.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192,
                },
            ),
            LLAMA3_TOKENS,
            LLAMA3,
            seed=2,
            tf4_extra={"pretraining_tp": 1, "mlp_bias": False, "attention_bias": False},
        ),
        Family(
            "smollm2",
            "LlamaForCausalLM",
            "LlamaConfig",
            "SmolLM2-135M-Instruct: 9 heads over 3 KV heads, head_dim 64, tied, rope_theta 100000",
            dict(
                hidden_size=48,
                intermediate_size=128,
                num_attention_heads=3,
                num_key_value_heads=1,
                tie_word_embeddings=True,
                rms_norm_eps=1e-5,
                rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
            ),
            Tokens(
                "bpe",
                bos="<|im_start|>",
                eos="<|im_end|>",
                specials=CHATML_TOKENS,
                unk="<|endoftext|>",
                pad="<|endoftext|>",
            ),
            CHATML,
            seed=1,
        ),
        Family(
            "smollm3",
            "SmolLM3ForCausalLM",
            "SmolLM3Config",
            "SmolLM3-3B: 16 heads over 4 KV heads, tied, every 4th layer without rope (here the 2nd)",
            dict(
                hidden_size=64,
                intermediate_size=128,
                num_attention_heads=4,
                num_key_value_heads=1,
                tie_word_embeddings=True,
                rms_norm_eps=1e-6,
                no_rope_layers=[1, 0],
                no_rope_layer_interval=2,
                rope_parameters={"rope_type": "default", "rope_theta": 5000000.0},
            ),
            Tokens(
                "bpe", bos=None, eos="<|im_end|>", specials=("<|im_start|>", "<|end_of_text|>"), pad="<|end_of_text|>"
            ),
            CHATML,
            seed=0,
        ),
        Family(
            "mistral",
            "MistralForCausalLM",
            "MistralConfig",
            "Mistral-7B-Instruct-v0.3: 32 heads over 8 KV heads, untied, no sliding window, rope_theta 1e6",
            dict(
                hidden_size=64,
                intermediate_size=128,
                num_attention_heads=4,
                num_key_value_heads=1,
                head_dim=16,
                tie_word_embeddings=False,
                sliding_window=None,
                rms_norm_eps=1e-5,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            ),
            Tokens("spm", bos="<s>", eos="</s>", specials=("[INST]", "[/INST]"), add_bos=True, unk="<unk>"),
            MISTRAL,
            seed=0,
            accepts_system=False,
        ),
        Family(
            "qwen2",
            "Qwen2ForCausalLM",
            "Qwen2Config",
            "Qwen2.5-0.5B-Instruct: 14 heads over 2 KV heads (7:1), q/k/v biases, tied, rope_theta 1e6",
            dict(
                hidden_size=112,
                intermediate_size=128,
                num_attention_heads=7,
                num_key_value_heads=1,
                tie_word_embeddings=True,
                rms_norm_eps=1e-6,
                use_sliding_window=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            ),
            QWEN_TOKENS,
            CHATML,
            seed=5,
            tf4=_without_layer_types,
            tf4_extra={"sliding_window": 32768, "max_window_layers": 21},
        ),
        Family(
            "qwen3",
            "Qwen3ForCausalLM",
            "Qwen3Config",
            "Qwen3-0.6B: 16 heads over 8 KV heads, head_dim 128 wider than hidden / heads, q/k norms, tied",
            dict(
                hidden_size=64,
                intermediate_size=128,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=32,
                tie_word_embeddings=True,
                rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            ),
            QWEN_TOKENS,
            CHATML,
            seed=4,
            tf4=_without_layer_types,
            tf4_extra={"sliding_window": None, "max_window_layers": 28},
        ),
        Family(
            "gemma",
            "GemmaForCausalLM",
            "GemmaConfig",
            "Gemma-2B: 8 heads over 1 KV head, head_dim 256, tied, RMSNorm weights stored as offsets from 1",
            dict(
                hidden_size=64,
                intermediate_size=128,
                num_attention_heads=4,
                num_key_value_heads=1,
                head_dim=16,
                hidden_act="gelu_pytorch_tanh",
                tie_word_embeddings=True,
                rms_norm_eps=1e-6,
                # Larger weights outweigh the embedding Gemma scales by sqrt(hidden).
                initializer_range=1.0,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            ),
            GEMMA_TOKENS,
            GEMMA,
            seed=1,
            accepts_system=False,
            # gemma-2b's config.json names the tanh GELU "gelu"; transformers reads it as the tanh one.
            tf4_extra={"hidden_act": "gelu"},
        ),
        Family(
            "gemma2",
            "Gemma2ForCausalLM",
            "Gemma2Config",
            "Gemma-2-2B-it: 8 heads over 4 KV heads, head_dim wider than hidden / heads, query_pre_attn_scalar, "
            "soft-capped attention and logits, alternating sliding-window layers",
            dict(
                hidden_size=64,
                intermediate_size=128,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=32,
                # Gemma-2-27B's rule (hidden / heads), unlike head_dim, so a wrong scale shows.
                query_pre_attn_scalar=16,
                # The attention cap (50 in the checkpoint) and the window (4096) are small enough here
                # to bite on random weights and a short prompt; the logits cap is the real one.
                attn_logit_softcapping=10.0,
                final_logit_softcapping=30.0,
                sliding_window=8,
                hidden_activation="gelu_pytorch_tanh",
                tie_word_embeddings=True,
                rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            ),
            GEMMA_TOKENS,
            GEMMA,
            seed=8,
            accepts_system=False,
            embedding_scale=1 / 8,
            tf4=_without_layer_types,
            tf4_extra={"cache_implementation": "hybrid"},
        ),
        Family(
            "gemma3",
            "Gemma3ForCausalLM",
            "Gemma3TextConfig",
            "Gemma-3-1B-it: 4 heads over 1 KV head, head_dim 256, q/k norms, local and global rope thetas, "
            "5 sliding-window layers to 1 global (here 1 to 1)",
            dict(
                hidden_size=64,
                intermediate_size=128,
                num_attention_heads=4,
                num_key_value_heads=1,
                head_dim=32,
                query_pre_attn_scalar=32,
                sliding_window=8,
                layer_types=["sliding_attention", "full_attention"],
                hidden_activation="gelu_pytorch_tanh",
                tie_word_embeddings=True,
                rms_norm_eps=1e-6,
                rope_parameters={
                    "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                },
            ),
            GEMMA_TOKENS,
            GEMMA3,
            seed=1,
            embedding_scale=1 / 8,
            tf4=_gemma3_tf4,
            tf4_extra={"cache_implementation": "hybrid"},
        ),
        Family(
            "phi3",
            "Phi3ForCausalLM",
            "Phi3Config",
            "Phi-3.5-mini-instruct: 32 heads, no GQA, fused qkv and gate_up projections, untied, longrope",
            dict(
                hidden_size=64,
                intermediate_size=128,
                num_attention_heads=4,
                num_key_value_heads=4,
                tie_word_embeddings=False,
                rms_norm_eps=1e-5,
                # Shorter than the contract's prompt: this model decodes with the long factors (phi4mini,
                # below it, with the short ones).
                original_max_position_embeddings=32,
                sliding_window=262144,
                rope_parameters={
                    "rope_type": "longrope",
                    "rope_theta": 10000.0,
                    "short_factor": [1.0, 1.02, 1.05, 1.1, 1.2, 1.5, 2.0, 3.0],
                    "long_factor": [1.0, 1.1, 1.5, 2.5, 4.0, 8.0, 16.0, 32.0],
                    "original_max_position_embeddings": 32,
                },
            ),
            Tokens(
                "spm",
                bos="<s>",
                eos="<|endoftext|>",
                specials=("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
                unk="<unk>",
                pad="<|endoftext|>",
                stops=("<|end|>",),
            ),
            PHI3,
            seed=1,
            tf4=_phi3_tf4,
        ),
        Family(
            "phi4",
            "Phi3ForCausalLM",
            "Phi3Config",
            "phi-4: 40 heads over 10 KV heads, head_dim 128, untied, plain rope over a 16k context",
            dict(
                hidden_size=64,
                intermediate_size=128,
                num_attention_heads=4,
                num_key_value_heads=1,
                tie_word_embeddings=False,
                rms_norm_eps=1e-5,
                # With transformers' default original_max_position_embeddings (4096) below it.
                max_position_embeddings=16384,
                rope_parameters={"rope_type": "default", "rope_theta": 250000.0},
            ),
            Tokens(
                "bpe",
                bos="<|endoftext|>",
                eos="<|im_end|>",
                specials=("<|im_start|>", "<|im_sep|>"),
                pad="<|endoftext|>",
                stops=("<|endoftext|>",),
            ),
            PHI4,
        ),
        Family(
            "phi4mini",
            "Phi3ForCausalLM",
            "Phi3Config",
            "Phi-4-mini-instruct: 24 heads over 8 KV heads, rope over 3/4 of each head, longrope, tied",
            dict(
                # onnxruntime's attention kernel wants the rotated half (here 48 / 2) a multiple of 8:
                # head_dim stays 64 (128 in the checkpoint), so 3 heads over 1 KV head.
                hidden_size=192,
                intermediate_size=128,
                num_attention_heads=3,
                num_key_value_heads=1,
                tie_word_embeddings=True,
                rms_norm_eps=1e-5,
                original_max_position_embeddings=128,
                sliding_window=262144,
                rope_parameters={
                    "rope_type": "longrope",
                    "rope_theta": 10000.0,
                    "partial_rotary_factor": 0.75,
                    "short_factor": [1.0 + 0.05 * index for index in range(24)],
                    "long_factor": [1.0 + 1.5 * index for index in range(24)],
                    "original_max_position_embeddings": 128,
                },
            ),
            Tokens(
                "bpe",
                bos="<|endoftext|>",
                eos="<|endoftext|>",
                specials=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
                pad="<|endoftext|>",
                stops=("<|end|>",),
            ),
            PHI4_MINI,
            tf4=_phi3_tf4,
        ),
        Family(
            "granite",
            "GraniteForCausalLM",
            "GraniteConfig",
            "granite-3.1-2b-instruct: 32 heads over 8 KV heads, tied, embedding/attention/residual/logits multipliers",
            dict(
                hidden_size=64,
                intermediate_size=128,
                num_attention_heads=4,
                num_key_value_heads=1,
                tie_word_embeddings=True,
                rms_norm_eps=1e-5,
                embedding_multiplier=12.0,
                attention_multiplier=0.015625,
                residual_multiplier=0.22,
                logits_scaling=8.0,
                # Larger weights make up for what the multipliers shrink (else one token repeats).
                initializer_range=1.0,
                rope_parameters={"rope_type": "default", "rope_theta": 5000000.0},
            ),
            Tokens(
                "bpe",
                bos="<|end_of_text|>",
                eos="<|end_of_text|>",
                specials=("<|start_of_role|>", "<|end_of_role|>"),
                pad="<|end_of_text|>",
            ),
            GRANITE,
        ),
        Family(
            "olmo",
            "OlmoForCausalLM",
            "OlmoConfig",
            "OLMo-7B-0724-Instruct-hf: 32 heads, no GQA, layer norms without weights, clipped q/k/v, untied",
            dict(
                hidden_size=64,
                intermediate_size=128,
                num_attention_heads=4,
                num_key_value_heads=4,
                tie_word_embeddings=False,
                # 8 in the checkpoint; small enough here to clip random projections.
                clip_qkv=2.0,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            ),
            Tokens(
                "bpe",
                bos="<|endoftext|>",
                eos="<|endoftext|>",
                specials=("<|padding|>", "<|system|>", "<|user|>", "<|assistant|>"),
                pad="<|padding|>",
            ),
            TULU,
            seed=2,
        ),
    )
}
