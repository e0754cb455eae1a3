"""Running models on onnxruntime-genai: ``load(name_or_path) -> Model``.

    model = load("smollm2-135m-instruct")
    model.chat([{"role": "user", "content": "Hi"}]).text
    for piece in model.stream(messages): ...
    model.generate("Once upon a time", max_tokens=32)

Underneath, one generation path: token ids -> :class:`Response` per token (text and
metrics) -> :class:`Result`. The server and the benchmarks consume the same stream
(:meth:`Model.stream_generate`, :meth:`Model.stream_chat`).
"""

from slmops.runtime.generate import Response, Result, collect
from slmops.runtime.model import Model, load
from slmops.runtime.options import GenerationOptions
from slmops.runtime.threads import default_threads

__all__ = ["GenerationOptions", "Model", "Response", "Result", "collect", "default_threads", "load"]
