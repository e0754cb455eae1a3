"""Continuous batching over onnxruntime: one decode step advances every running sequence.

onnxruntime-genai batches only sequences that start together, and its Engine
needs paged attention, which its CPU models lack. The decoders it builds use
GroupQueryAttention, which reads each row's own length from the attention mask,
so rows of different lengths can share one step: each sequence owns a row of a
KV cache shared between past and present (written in place through IO binding),
a new request is prefilled into a free row between two steps, and a finished
one gives its row back at once. Rows stay packed at the top so each step runs
on exactly the live rows.

Requests that need a grammar (JSON, tools) run on onnxruntime-genai's own
generator instead (see :mod:`slmops.server.scheduler`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slmops.runtime.generate import Response, StopText
from slmops.runtime.options import GenerationOptions

KV_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
PREFILL_BLOCK = 1024  # most padded prompt tokens prefilled in one call (rows x longest prompt)


@dataclass(eq=False)
class Sequence:
    """One request's state in the batch."""

    prompt: list[int]
    options: GenerationOptions
    max_new: int
    start: float
    tokens: list[int] = field(default_factory=list)
    row: int = -1
    first: float = 0.0
    rng: np.random.Generator | None = None
    decoder: object = None  # the tokenizer's incremental decoder
    stop_text: StopText | None = None
    owner: object = None  # the scheduler's job this sequence answers

    @property
    def length(self) -> int:
        """Tokens in the KV cache after this step's token is written."""
        return len(self.prompt) + len(self.tokens)


class BatchedDecoder:
    """A decoder-only ONNX model run with continuously batched rows.

    Args:
        model: a loaded :class:`slmops.runtime.Model` (its folder, config, tokenizer, stop tokens).
        rows: sequences decoded at once.
        max_length: tokens per row (prompt plus answer); longer requests go elsewhere.
    """

    def __init__(self, model, rows: int, max_length: int) -> None:
        import onnxruntime as ort

        decoder = model.genai_config["model"]["decoder"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = model.threads
        # Without the arena, buffers of a large prefill go back to the system after it.
        options.enable_cpu_mem_arena = False
        self.session = ort.InferenceSession(str(Path(model.path) / decoder["filename"]), options,
                                            providers=["CPUExecutionProvider"])
        self.layers, self.names = decoder["num_hidden_layers"], _names(decoder)
        inputs = {item.name: item for item in self.session.get_inputs()}
        kv_type = KV_TYPES[inputs[self.names["past"][0]].type]
        shape = (rows, decoder["num_key_value_heads"], max_length, decoder["head_size"])
        # Touched now, not lazily: attention reads whole rows, so the cache becomes resident on
        # first use anyway, and memory measured after loading should be memory in use.
        self.cache = [np.empty(shape, kv_type) for _ in range(2 * self.layers)]
        for buffer in self.cache:
            buffer.fill(0)
        self.vocab = model.genai_config["model"]["vocab_size"]
        self.logits = np.zeros((rows, 1, self.vocab), np.float32)
        self.model, self.rows, self.max_length = model, rows, max_length
        self.running: list[Sequence] = []
        self.bindings: dict[int, object] = {}

    @staticmethod
    def token_bytes(model) -> int:
        """Bytes of KV cache one token takes in one row."""
        decoder = model.genai_config["model"]["decoder"]
        return 2 * decoder["num_hidden_layers"] * decoder["num_key_value_heads"] * decoder["head_size"] * 4

    @property
    def nbytes(self) -> int:
        return sum(buffer.nbytes for buffer in self.cache)

    @staticmethod
    def supports(model) -> bool:
        """Whether ``model``'s decoder has the inputs this batching needs (and nothing more)."""
        decoder = model.genai_config.get("model", {}).get("decoder", {})
        inputs = decoder.get("inputs", {})
        plain = set(inputs) == {"input_ids", "attention_mask", "past_key_names", "past_value_names"}
        return plain and decoder.get("filename", "").endswith(".onnx") and "sessions" not in decoder

    @property
    def free(self) -> int:
        return self.rows - len(self.running)

    def fits(self, prompt_tokens: int, max_new: int) -> bool:
        return prompt_tokens + max_new <= self.max_length

    # ---- admitting and leaving ------------------------------------------

    def add(self, sequences: list[Sequence]) -> list[Response]:
        """Prefill ``sequences`` into free rows; returns their first tokens, in order.

        Prompts are prefilled together (right-padded) while the padded block stays
        small: the logits of every prompt position are materialised.
        """
        responses, group = [], []
        for sequence in sequences:
            longest = max([len(sequence.prompt), *(len(item.prompt) for item in group)])
            if group and longest * (len(group) + 1) > PREFILL_BLOCK:
                responses += self._prefill(group)
                group = []
            group.append(sequence)
        return responses + (self._prefill(group) if group else [])

    def _prefill(self, group: list[Sequence]) -> list[Response]:
        first = len(self.running)
        longest = max(len(sequence.prompt) for sequence in group)
        ids = np.zeros((len(group), longest), np.int64)
        mask = np.zeros_like(ids)
        for offset, sequence in enumerate(group):
            sequence.row = first + offset
            self.running.append(sequence)
            sequence.rng = np.random.default_rng(sequence.options.seed)
            sequence.decoder = self.model.tokenizer.create_stream()
            sequence.stop_text = StopText(sequence.options.stop)
            ids[offset, : len(sequence.prompt)] = sequence.prompt
            mask[offset, : len(sequence.prompt)] = 1
        io = self.session.io_binding()
        io.bind_cpu_input(self.names["input_ids"], ids)
        io.bind_cpu_input(self.names["mask"], mask)
        io.bind_output(self.names["logits"], "cpu")
        self._bind_cache(io, first, len(group))
        self.session.run_with_iobinding(io)
        logits = io.get_outputs()[0].numpy()
        rows = [logits[offset, len(sequence.prompt) - 1] for offset, sequence in enumerate(group)]
        return [self._emit(sequence, row) for sequence, row in zip(group, rows)]

    def remove(self, sequence: Sequence) -> None:
        """Free ``sequence``'s row: the last row moves into it so rows stay packed."""
        last = self.running[-1]
        if last is not sequence:
            length = last.length
            for buffer in self.cache:
                buffer[sequence.row, :, :length] = buffer[last.row, :, :length]
            self.running[sequence.row] = last
            last.row = sequence.row
        self.running.pop()

    # ---- decoding ---------------------------------------------------------

    def step(self) -> list[tuple[Sequence, Response]]:
        """One token for every running sequence (finished ones leave the batch)."""
        count = len(self.running)
        if not count:
            return []
        lengths = np.array([sequence.length - 1 for sequence in self.running])
        tokens = np.array([[sequence.tokens[-1]] for sequence in self.running], np.int64)
        mask = (np.arange(lengths.max() + 1)[None, :] <= lengths[:, None]).astype(np.int64)
        io = self._binding(count)
        io.bind_cpu_input(self.names["input_ids"], tokens)
        io.bind_cpu_input(self.names["mask"], mask)
        self.session.run_with_iobinding(io)
        results = []
        for sequence, logits in zip(list(self.running), self.logits[:count, 0]):
            results.append((sequence, self._emit(sequence, logits)))
        return results

    def _emit(self, sequence: Sequence, logits: np.ndarray) -> Response:
        token = _sample(logits, sequence)
        now = time.perf_counter()
        sequence.tokens.append(token)
        count = len(sequence.tokens)
        if count == 1:
            sequence.first = now
        finish, text = self._finish(sequence, token)
        if finish:
            self.remove(sequence)
        rate = (count - 1) / (now - sequence.first) if count > 1 and now > sequence.first else 0.0
        return Response(text, token, len(sequence.prompt), count, sequence.first - sequence.start, rate,
                        now - sequence.start, finish)

    def _finish(self, sequence: Sequence, token: int) -> tuple[str | None, str]:
        if token in self.model.stop_token_ids:
            return "stop", ""
        text, stopped = sequence.stop_text.feed(sequence.decoder.decode(token))
        if stopped:
            return "stop", text
        if len(sequence.tokens) >= sequence.max_new or sequence.length >= self.max_length:
            return "length", text + sequence.stop_text.flush()
        return None, text

    def _binding(self, count: int):
        # The cache rows and logits of a batch size never move: bind them once per size.
        if count not in self.bindings:
            io = self.session.io_binding()
            view = self.logits[:count]
            io.bind_output(self.names["logits"], "cpu", 0, np.float32, list(view.shape), view.ctypes.data)
            self._bind_cache(io, 0, count)
            self.bindings[count] = io
        return self.bindings[count]

    def _bind_cache(self, io, first: int, count: int) -> None:
        names = zip(self.names["past"], self.names["present"])
        for buffer, (past, present) in zip(self.cache, names):
            view = buffer[first:first + count]
            # The same memory as input and output: attention appends in place, nothing is copied.
            io.bind_input(past, "cpu", 0, view.dtype, list(view.shape), view.ctypes.data)
            io.bind_output(present, "cpu", 0, view.dtype, list(view.shape), view.ctypes.data)


def _names(decoder: dict) -> dict:
    inputs, outputs = decoder["inputs"], decoder["outputs"]
    layers = range(decoder["num_hidden_layers"])
    past = [name % layer for layer in layers for name in (inputs["past_key_names"], inputs["past_value_names"])]
    present = [name % layer for layer in layers
               for name in (outputs["present_key_names"], outputs["present_value_names"])]
    return {"input_ids": inputs["input_ids"], "mask": inputs["attention_mask"], "logits": outputs["logits"],
            "past": past, "present": present}


def _sample(logits: np.ndarray, sequence: Sequence) -> int:
    """The next token: greedy at temperature 0, else top-k / top-p sampling, after the repetition penalty."""
    options = sequence.options
    if options.repetition_penalty != 1.0:
        logits = logits.copy()
        seen = np.unique(np.array(sequence.prompt + sequence.tokens, np.int64))
        values = logits[seen]
        logits[seen] = np.where(values > 0, values / options.repetition_penalty, values * options.repetition_penalty)
    if options.temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / options.temperature
    if 0 < options.top_k < len(scaled):
        top = np.argpartition(scaled, -options.top_k)[-options.top_k:]
        keep = top[np.argsort(scaled[top])[::-1]]
    else:
        keep = np.argsort(scaled)[::-1]
    probs = np.exp(scaled[keep] - scaled[keep[0]])
    probs /= probs.sum()
    if options.top_p < 1.0:
        cut = int(np.searchsorted(np.cumsum(probs), options.top_p)) + 1
        keep, probs = keep[:cut], probs[:cut] / probs[:cut].sum()
    return int(keep[sequence.rng.choice(len(keep), p=probs)])
