"""A PEFT LoRA adapter merged into its base model, saved as a plain Hugging Face folder."""

from __future__ import annotations

import shutil
from pathlib import Path

from slmops.errors import ConversionError

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
)


def merge_adapter(base: Path, adapter: Path, folder: Path) -> Path:
    """Merge `adapter` into `base` (W + BA) and save the result in `folder`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ConversionError(
            f"the adapter {adapter} does not fit the base model {base}: {str(exc).splitlines()[0]}"
        ) from exc
    merged.save_pretrained(folder)
    # The adapter's tokenizer wins: fine-tuning may have added tokens or a chat template.
    for source in (base, adapter):
        for name in _TOKENIZER_FILES:
            if (Path(source) / name).exists():
                shutil.copy(Path(source) / name, folder / name)
    return folder
