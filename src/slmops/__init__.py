"""slmops: the last mile for fine-tuned small language models, on a CPU.

The Python API under the `slmops` command::

    import slmops
    model = slmops.load("smollm2-135m-instruct")
    print(model.chat([{"role": "user", "content": "Hello"}]).text)
    vectors = slmops.load("my-embedding-model").embed(["a text", "another text"])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

# OpenBLAS (numpy's BLAS) keeps its threads spinning for ~0.1 s after each product; a calibrated
# build alternates numpy products with onnxruntime runs, whose threads then share cores with the
# spinners (SmolLM2's build on a 2-core AVX2 Zen 3: 448 -> 417 s, the same bytes). Read once, when
# numpy first loads OpenBLAS; a value the user set wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

if TYPE_CHECKING:
    from slmops.runtime import Embedder, Model

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(name_or_path: str | Path, threads: int | None = None) -> Model | Embedder:
    """Load a cached model by name, or a model folder by path.

    Args:
        name_or_path: a name listed by `slmops cache ls`, or a folder holding
            `genai_config.json`.
        threads: intra-op threads; None counts the CPUs this process may use.

    Returns:
        A :class:`slmops.runtime.Model` (chat, generate), or for a model converted with
        ``--task embedding`` a :class:`slmops.runtime.Embedder` (``embed(["text", ...])``).
    """
    # Imported here so that `import slmops` (and every CLI command) does not load onnxruntime-genai.
    from slmops.cache.resolver import resolve
    from slmops.runtime import Embedder, Model

    folder = resolve(name_or_path)
    if folder.is_embedding:
        return Embedder.from_folder(folder, threads)
    return Model.from_folder(folder, threads)
