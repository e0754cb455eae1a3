"""Tiny random models and a tiny tokenizer, built at test time, offline.

Every architecture gets the same small shape so that a conversion takes a second
or two; weights are random but seeded, with a larger init range so that greedy
tokens are decided by clear margins rather than by rounding noise.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TRAINING_TEXT = (
    "The quick brown fox jumps over the lazy dog. Hello world, this is a test of a tiny tokenizer. "
    "Convert, cache, run, serve, benchmark and validate small language models on a CPU. "
    "Příliš žluťoučký kůň úpěl ďábelské ódy. 😀 你好，世界。 مرحبا بالعالم"
)

ARCHITECTURES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"original_max_position_embeddings": 512}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 16}),
}


def build_tokenizer(folder: Path, chat_template: str = CHATML_TEMPLATE) -> Path:
    """A byte-level BPE tokenizer with ChatML special tokens, saved as a HF tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([TRAINING_TEXT] * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = chat_template
    fast.save_pretrained(folder)
    return folder


def build_model(folder: Path, tokenizer_dir: Path, arch: str = "llama", tie: bool = True, seed: int = 0) -> Path:
    """Save a 2-layer random `arch` model plus the tiny tokenizer into `folder`."""
    import shutil

    import torch
    import transformers

    config_name, model_name, extra = ARCHITECTURES[arch]
    eos = 2  # <|im_end|>
    config = getattr(transformers, config_name)(
        vocab_size=len(SPECIAL_TOKENS) + 509,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=eos,
        pad_token_id=0,
        **extra,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    model.save_pretrained(folder)
    for item in tokenizer_dir.iterdir():
        shutil.copy(item, folder / item.name)
    return folder


def strip_chat_template(folder: Path) -> Path:
    """Make ``folder`` (a Hugging Face or model folder) a base model's: no chat template anywhere."""
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder
