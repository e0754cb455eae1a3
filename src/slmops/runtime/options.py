"""Generation options: what every call can set, and where the defaults come from.

Precedence, lowest first: slmops' defaults, the ``search`` section of the model's
``genai_config.json``, the ``ModelConfig`` of its ``inference_model.json``, then the
options of each call.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from slmops.errors import UsageError


@dataclass(frozen=True)
class GenerationOptions:
    """How one answer is generated.

    Attributes:
        max_tokens: most tokens to generate; None fills the model's context.
        temperature: 0 is greedy (always the most likely token).
        top_p: sample among the most likely tokens holding this probability mass.
        top_k: sample among the k most likely tokens.
        repetition_penalty: above 1 discourages repeating tokens.
        seed: the same seed and options give the same answer; None is random.
        stop: strings that end the answer (not included in it).
        speculative: draft tokens from the prompt and the answer so far and verify them in
            one step (:mod:`slmops.runtime.speculative`); it only applies to greedy answers
            (guided ones too), and never changes their tokens.
    """

    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    speculative: bool = True

    def __post_init__(self) -> None:
        _check(self.max_tokens is None or self.max_tokens > 0, "max_tokens must be a positive integer")
        _check(self.temperature >= 0, "temperature must be 0 or more")
        _check(0 < self.top_p <= 1, "top_p must be above 0 and at most 1")
        _check(self.top_k >= 0, "top_k must be 0 or more")
        _check(self.repetition_penalty > 0, "repetition_penalty must be above 0")
        _check(self.seed is None or self.seed >= 0, "seed must be 0 or more")

    def replace(self, **overrides) -> GenerationOptions:
        """A copy with the given options changed; options given as None keep their value."""
        names = {item.name for item in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise UsageError(f"Unknown generation option {', '.join(unknown)}; known: {', '.join(sorted(names))}.")
        changes = {key: value for key, value in overrides.items() if value is not None}
        if isinstance(changes.get("stop"), str):
            changes["stop"] = (changes["stop"],)
        if "stop" in changes:
            changes["stop"] = tuple(text for text in changes["stop"] if text)
        return dataclasses.replace(self, **changes)

    def search_options(self, prompt_tokens: int, context_length: int) -> dict:
        """The onnxruntime-genai search options for a prompt of this many tokens."""
        budget = context_length - prompt_tokens
        max_tokens = budget if self.max_tokens is None else min(self.max_tokens, budget)
        options = {
            # The KV cache is sized to max_length up front: never ask for more than needed.
            "max_length": prompt_tokens + max_tokens,
            "do_sample": self.temperature > 0,
            "repetition_penalty": self.repetition_penalty,
            "num_beams": 1,
        }
        if self.temperature > 0:
            options.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        if self.seed is not None:
            options["random_seed"] = self.seed
        return options


def model_defaults(search: dict, model_config: dict | None) -> GenerationOptions:
    """The defaults of a model: genai_config's search section, then inference_model.json's ModelConfig."""
    options = GenerationOptions()
    if search:
        sampled = bool(search.get("do_sample"))
        options = options.replace(
            temperature=search.get("temperature") if sampled else 0.0,
            top_p=search.get("top_p"),
            top_k=search.get("top_k"),
            repetition_penalty=search.get("repetition_penalty"),
        )
    if model_config:
        known = ("temperature", "top_p", "top_k", "repetition_penalty")
        options = options.replace(**{key: model_config.get(key) for key in known})
    return options


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(f"Invalid generation option: {message}.")
