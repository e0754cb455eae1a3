"""The on-disk format of a model folder: what slmops reads and writes beside the ONNX files.

``inference_model.json`` (the Foundry Local catalog entry), chat messages and prompt
templates, and what the ONNX files themselves say about precision and size. It knows
nothing of the cache, the runtime or the commands.
"""
