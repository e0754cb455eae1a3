"""slmops: the last mile for fine-tuned small language models, on a CPU.

The Python API under the `slmops` command::

    import slmops
    model = slmops.load("smollm2-135m-instruct")
    print(model.chat([{"role": "user", "content": "Hello"}]).text)
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(name_or_path, **kwargs):
    """Load a cached model by name, or a model folder by path.

    Args:
        name_or_path: a name listed by `slmops cache ls`, or a folder holding
            `genai_config.json`.
        **kwargs: runtime settings, e.g. ``threads=2``.

    Returns:
        A :class:`slmops.runtime.Model`.
    """
    from slmops.runtime import load as _load

    return _load(name_or_path, **kwargs)
