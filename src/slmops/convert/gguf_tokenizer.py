"""tokenizer.json and tokenizer_config.json rebuilt from a GGUF's vocabulary.

A GGUF stores the vocabulary, the token types, BPE merges or SentencePiece scores, and for BPE
only the *name* of the pre-tokenizer (`tokenizer.ggml.pre`). slmops maps that name back to the
splitting rules of the published tokenizers it comes from, so the rebuilt tokenizer gives the
same ids as the original one, and follows llama.cpp where the file leaves a choice open
(whether to add BOS when the file does not say).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slmops.convert.gguf_file import GGUFFile
from slmops.errors import ConversionError

# llama.cpp's token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# llama.cpp's pre-tokenizer name -> how the original tokenizer.json splits text before BPE
_PRE_TOKENIZERS = {
    **dict.fromkeys(("default", "gpt-2", "gpt2", "olmo", "mpt", "phi-2"), "gpt2"),
    **dict.fromkeys(("smollm", "refact", "starcoder", "codeshell"), "digits"),
    **dict.fromkeys(("llama-bpe", "llama3", "llama-v3", "dbrx", "smaug-bpe", "falcon3", "pixtral"), _LLAMA3),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez", "stablelm2"), _QWEN2),
    **dict.fromkeys(("gpt-4o", "llama4"), _GPT4O),
}
# Pre-tokenizers whose vocabularies take a whole pre-token from the vocabulary before merging,
# and add BOS unless the file says otherwise (llama.cpp's defaults for them).
_LLAMA3_LIKE = {"llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral"}
_NFC = {"qwen2", "deepseek-r1-qwen", "megrez"}
_SENTENCEPIECE_CLASSES = {("llama", False): "GemmaTokenizer", ("llama", True): "LlamaTokenizer"}
_SPECIAL_KEYS = {"bos_token": "bos", "eos_token": "eos", "unk_token": "unknown", "pad_token": "padding"}


def write_tokenizer(gguf_file: GGUFFile, folder: Path, notes: list[str] | None = None) -> None:
    """tokenizer.json + tokenizer_config.json (with the chat template) from the GGUF vocabulary."""
    from transformers import PreTrainedTokenizerFast

    meta = gguf_file.metadata
    if "tokenizer.ggml.tokens" not in meta:
        raise ConversionError(f"{gguf_file.path} has no tokenizer vocabulary; slmops needs one to run the model.")
    kind = meta.get("tokenizer.ggml.model")
    if kind == "gpt2":
        tokenizer, add_bos = _bpe(meta, notes if notes is not None else [])
    elif kind == "llama":
        tokenizer, add_bos = _sentencepiece(meta)
    else:
        raise ConversionError(
            f"{gguf_file.path.name} has a '{kind}' tokenizer; slmops reads BPE ('gpt2') and SentencePiece ('llama') ones."
        )
    tokens = meta["tokenizer.ggml.tokens"]
    special = {}
    for name, key in _SPECIAL_KEYS.items():
        token_id = meta.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None and token_id < len(tokens):
            special[name] = tokens[token_id]
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special)
    if meta.get("tokenizer.chat_template"):
        fast.chat_template = meta["tokenizer.chat_template"]
    fast.save_pretrained(str(folder))
    _update_tokenizer_config(folder, add_bos, _SENTENCEPIECE_CLASSES.get((kind, _space_prefix(meta))))


def _update_tokenizer_config(folder: Path, add_bos: bool, tokenizer_class: str | None) -> None:
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["add_bos_token"] = add_bos
    if tokenizer_class:  # onnxruntime-genai's tokenizer picks its SentencePiece-style BPE by this name
        config["tokenizer_class"] = tokenizer_class
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _space_prefix(meta: dict) -> bool:
    return bool(meta.get("tokenizer.ggml.add_space_prefix", True))


def _token_types(meta: dict) -> list[int]:
    return list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(meta["tokenizer.ggml.tokens"]))


def _vocab(tokens: list[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for index, token in enumerate(tokens):
        vocab.setdefault(token, index)  # a repeated string keeps its first id, as llama.cpp's lookup does
    return vocab


def _bpe(meta: dict, notes: list[str]) -> tuple[Any, bool]:
    from tokenizers import Tokenizer, decoders, models, normalizers

    tokens, pre = meta["tokenizer.ggml.tokens"], str(meta.get("tokenizer.ggml.pre", "default"))
    merges = [tuple(merge.split(" ", 1)) for merge in meta.get("tokenizer.ggml.merges", [])]
    model = models.BPE(vocab=_vocab(tokens), merges=merges, ignore_merges=pre in _LLAMA3_LIKE)
    tokenizer = Tokenizer(model)
    if pre not in _PRE_TOKENIZERS:
        notes.append(
            f"the GGUF's pre-tokenizer '{pre}' is unknown to slmops: text is split as GPT-2 splits it, "
            "so token ids may differ from the original tokenizer's"
        )
    tokenizer.pre_tokenizer = _byte_level_pre_tokenizer(_PRE_TOKENIZERS.get(pre, "gpt2"))
    if pre in _NFC:
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.decoder = decoders.ByteLevel()
    _add_special_tokens(tokenizer, tokens, _token_types(meta))
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", pre in _LLAMA3_LIKE))
    _add_post_processor(tokenizer, meta, add_bos, byte_level=True)
    return tokenizer, add_bos


def _byte_level_pre_tokenizer(split: str) -> Any:
    from tokenizers import Regex, pre_tokenizers

    if split == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if split == "digits":
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _sentencepiece(meta: dict) -> tuple[Any, bool]:
    """A SentencePiece BPE vocabulary as a tokenizers BPE: merges ranked by the merged piece's score."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    tokens, types = meta["tokenizer.ggml.tokens"], _token_types(meta)
    scores = list(meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens))
    unknown = meta.get("tokenizer.ggml.unknown_token_id")
    vocab = _vocab(tokens)
    model = models.BPE(
        vocab=vocab,
        merges=_sentencepiece_merges(tokens, scores, types, vocab),
        unk_token=tokens[unknown] if unknown is not None and unknown < len(tokens) else None,
        fuse_unk=True,
        byte_fallback=BYTE in types,
    )
    tokenizer = Tokenizer(model)
    # The leading space goes before the text's first word only, as transformers' SentencePiece
    # tokenizers add it (llama.cpp also adds one after every special token).
    prefix = _space_prefix(meta)
    if prefix:
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    else:
        tokenizer.normalizer = normalizers.Replace(" ", "\u2581")
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    tokenizer.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    _add_special_tokens(tokenizer, tokens, types)
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", True))
    _add_post_processor(tokenizer, meta, add_bos, byte_level=False)
    return tokenizer, add_bos


def _sentencepiece_merges(
    tokens: list[str], scores: list[float], types: list[int], vocab: dict[str, int]
) -> list[tuple[str, str]]:
    ranked = []
    for index, piece in enumerate(tokens):
        if types[index] != NORMAL or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-scores[index], index, vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _add_special_tokens(tokenizer: Any, tokens: list[str], types: list[int]) -> None:
    """Control tokens become special added tokens, user-defined ones plain added tokens: both are
    matched whole in the raw text before any splitting, as llama.cpp matches them."""
    from tokenizers import AddedToken

    added = [
        AddedToken(token, special=kind == CONTROL, normalized=False)
        for token, kind in zip(tokens, types)
        if kind in (CONTROL, USER_DEFINED) and token
    ]
    tokenizer.add_special_tokens([t for t in added if t.special])
    tokenizer.add_tokens([t for t in added if not t.special])


def _add_post_processor(tokenizer: Any, meta: dict, add_bos: bool, byte_level: bool) -> None:
    from tokenizers import processors

    tokens = meta["tokenizer.ggml.tokens"]
    steps: list[Any] = [processors.ByteLevel(trim_offsets=False)] if byte_level else []
    bos, eos = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    add_bos = add_bos and bos is not None
    if add_bos or add_eos:
        first = [tokens[bos]] if add_bos else []
        last = [tokens[eos]] if add_eos else []
        single = " ".join([*first, "$A", *last])
        pair = " ".join([*first, "$A", *last, *first, "$B:1", *last])
        ids = {tokens[i]: i for i in (bos if add_bos else None, eos if add_eos else None) if i is not None}
        steps.append(processors.TemplateProcessing(single=single, pair=pair, special_tokens=list(ids.items())))
    if steps:
        tokenizer.post_processor = processors.Sequence(steps) if len(steps) > 1 else steps[0]
