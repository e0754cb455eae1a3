"""Running models with onnxruntime-genai (and onnxruntime, for the batch): ``load(name_or_path) -> Model``.

    model = load("smollm2-135m-instruct")
    model.chat([{"role": "user", "content": "Hi"}]).text
    for piece in model.stream(messages): ...
    model.generate("Once upon a time", max_tokens=32)
    load_embedder("my-embedding-model").embed(["a text", "another"])  # unit vectors

Underneath, one generation layer: token ids -> a :class:`Response` per token (text and
metrics) -> a :class:`Result` (:func:`collect`). Tokens come from an onnxruntime-genai
generator per answer (:meth:`Model.stream_generate`: this API, `slmops model run`, the
evaluations and in-process benchmarks, and the server's requests no batch row holds) or
from a row of :class:`~slmops.runtime.batched.BatchedDecoder` (the server's continuous
batching); both turn each token into a :class:`Response` with the same
:class:`~slmops.runtime.generate.Answer`.
"""

from slmops.runtime.embed import Embedder, load_embedder
from slmops.runtime.generate import Response, Result, collect
from slmops.runtime.model import Model, load
from slmops.runtime.options import GenerationOptions
from slmops.runtime.threads import default_threads

__all__ = [
    "Embedder",
    "GenerationOptions",
    "Model",
    "Response",
    "Result",
    "collect",
    "default_threads",
    "load",
    "load_embedder",
]
