"""Embedding models: texts -> unit vectors, from the last hidden state of a decoder.

A model converted with ``slmops convert --task embedding`` outputs ``hidden_states``
instead of logits, which onnxruntime-genai's generator cannot run; so it runs on a
plain onnxruntime session, one forward pass per batch. Inputs are padded on the right
under an attention mask (the attention op takes every row's length from the mask and
the rotary positions start at 0 for each row), pooled as inference_model.json's
``Embedding.pooling`` says, and scaled to length 1.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from slmops.cache.resolver import resolve
from slmops.errors import ContextTooLong, SlmopsError, UsageError
from slmops.modelfolder.folder import ModelFolder
from slmops.modelfolder.inference_model import EmbeddingSettings
from slmops.runtime.threads import default_threads

BATCH_TOKENS = 8192  # padded tokens per forward pass: bounds the activations' memory
_ORT_FLOATS = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def load_embedder(name_or_path: str | Path, threads: int | None = None) -> Embedder:
    """Load a cached embedding model by name, or an embedding model folder by path.

    Raises:
        ModelNotFound: no such cached model or model folder.
        UsageError: the model makes text, not embeddings.
    """
    return Embedder.from_folder(resolve(name_or_path), threads)


class Embedder:
    """An embedding model loaded on onnxruntime.

    Attributes:
        name, path: the model's name and folder.
        settings: its pooling, normalisation and vector length (inference_model.json ``Embedding``).
        dimensions: the length of its vectors (the hidden size).
        context_length: the most tokens one input may have.
        threads: intra-op threads its session runs on.
        load_s: seconds the load took.
    """

    def __init__(self, folder: ModelFolder, session, tokenizer, threads: int, load_s: float) -> None:
        assert folder.inference_model is not None, "from_folder checks that the folder is an embedding model"
        self.folder, self.path, self.name = folder, folder.path, folder.name
        self.settings = folder.inference_model.Embedding or EmbeddingSettings()
        self.session, self.tokenizer = session, tokenizer
        self.threads, self.load_s = threads, load_s
        self.context_length = folder.context_length
        self.vocab_size = int(folder.genai_config.get("model", {}).get("vocab_size") or 0)
        self._pasts = [item for item in session.get_inputs() if item.name.startswith("past_key_values.")]
        decoder = folder.genai_config.get("model", {}).get("decoder", {})
        self._kv_heads, self._head_size = int(decoder.get("num_key_value_heads", 0)), int(decoder.get("head_size", 0))
        output = next((item for item in session.get_outputs() if item.name == self.settings.output), None)
        if output is None:
            raise SlmopsError(f"{folder.path / 'model.onnx'} has no '{self.settings.output}' output; convert it again.")
        size = output.shape[-1] if isinstance(output.shape[-1], int) else self.settings.dimensions
        if not size:
            raise SlmopsError(f"{folder.path / 'model.onnx'} does not say its hidden size; convert it again.")
        self.dimensions: int = int(size)

    @classmethod
    def from_folder(cls, folder: ModelFolder, threads: int | None = None) -> Embedder:
        """Load the embedding model of ``folder`` with ``threads`` intra-op threads."""
        if not folder.is_embedding:
            raise UsageError(
                f"{folder.name} makes text, not embeddings; convert a model with "
                "`slmops convert --task embedding` to embed with it."
            )
        threads = threads or default_threads()
        start = time.perf_counter()
        session, tokenizer = _session(folder.path, threads), _tokenizer(folder.path)
        return cls(folder, session, tokenizer, threads, time.perf_counter() - start)

    def __repr__(self) -> str:
        return f"<slmops Embedder {self.name!r} from {self.path}, {self.settings.pooling} pooling>"

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, with the special tokens its tokenizer adds (a BOS, an EOS)."""
        return [list(encoding.ids) for encoding in self.tokenizer.encode_batch(list(texts), add_special_tokens=True)]

    def embed(
        self, inputs: str | Sequence[str] | Sequence[Sequence[int]], dimensions: int | None = None
    ) -> list[list[float]]:
        """One vector per input, as lists of floats.

        Args:
            inputs: texts (or one text), or token-id lists (used as they are).
            dimensions: keep the first this many values of each vector (then scale it to length 1
                again); None keeps them all.

        Returns:
            The vectors, in the order of ``inputs``.

        Raises:
            UsageError: a mix of texts and token ids, an empty input, a token id outside the vocabulary, or more dimensions than the model has.
            ContextTooLong: an input longer than the model's context.
        """
        if isinstance(inputs, str):  # one text, not its characters
            inputs = [inputs]
        texts = [item for item in inputs if isinstance(item, str)]
        if texts and len(texts) < len(inputs):
            raise UsageError("inputs must be all texts or all token-id lists, not a mix.")
        ids = self.encode(texts) if texts else [[int(token) for token in item] for item in inputs]
        return self.embed_ids(ids, dimensions).tolist()

    def embed_ids(self, batch: Sequence[Sequence[int]], dimensions: int | None = None) -> np.ndarray:
        """Vectors (rows of a float32 array) of token-id lists; see :meth:`embed`."""
        self._check(batch, dimensions)
        vectors = np.zeros((len(batch), self.dimensions), np.float32)
        for rows in _batches([len(ids) for ids in batch], BATCH_TOKENS):
            vectors[rows] = self._forward([batch[row] for row in rows])
        return _finish(vectors, dimensions, self.settings.normalize)

    def _check(self, batch: Sequence[Sequence[int]], dimensions: int | None) -> None:
        if dimensions is not None and not 1 <= dimensions <= self.dimensions:
            raise UsageError(f"dimensions must be between 1 and {self.dimensions} for {self.name}, got {dimensions}.")
        for index, ids in enumerate(batch):
            if not ids:
                raise UsageError(f"input {index} is empty; every input needs at least one token.")
            if len(ids) > self.context_length:
                raise ContextTooLong(
                    f"input {index} has {len(ids)} tokens; {self.name} takes at most {self.context_length}."
                )
            bad = next((token for token in ids if not 0 <= token < self.vocab_size), None) if self.vocab_size else None
            if bad is not None:
                raise UsageError(f"input {index} has token id {bad}, outside the vocabulary (0-{self.vocab_size - 1}).")

    def _forward(self, batch: list[Sequence[int]]) -> np.ndarray:
        """Pooled (not yet normalised) vectors of one padded batch."""
        lengths = np.array([len(ids) for ids in batch])
        input_ids = np.zeros((len(batch), lengths.max()), np.int64)
        mask = np.zeros_like(input_ids)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)], mask[row, : len(ids)] = ids, 1
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        for past in self._pasts:  # an empty KV cache: every token is part of the prompt
            shape = (len(batch), self._kv_heads, 0, self._head_size)
            feeds[past.name] = np.zeros(shape, _ORT_FLOATS.get(past.type, np.float32))
        (hidden,) = self.session.run([self.settings.output], feeds)
        return _pool(hidden.astype(np.float32), mask, self.settings.pooling)


def _pool(hidden: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    if pooling == "last":
        return hidden[np.arange(len(hidden)), mask.sum(axis=1) - 1]
    weights = mask[..., None].astype(np.float32)
    return (hidden * weights).sum(axis=1) / weights.sum(axis=1)


def _finish(vectors: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    vectors = vectors[:, :dimensions] if dimensions else vectors
    if normalize or dimensions:  # a truncated vector is scaled to length 1 again
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    return vectors


def _batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Row indices grouped by similar length, each group at most ``budget`` padded tokens (one row at least)."""
    order = sorted(range(len(lengths)), key=lambda row: lengths[row])
    groups: list[list[int]] = []
    for row in order:
        group = groups[-1] if groups else None
        if group is None or lengths[row] * (len(group) + 1) > budget:
            groups.append([row])
        else:
            group.append(row)
    return groups


def _session(folder: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise SlmopsError(f"Could not load the embedding model in {folder}: {exc}") from exc


def _tokenizer(folder: Path):
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise SlmopsError("embedding models need the `tokenizers` package: pip install tokenizers") from exc
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise SlmopsError(f"{path} is missing; an embedding model folder needs its tokenizer.json.")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer
