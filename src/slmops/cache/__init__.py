"""The model cache: folders holding an `inference_model.json` beside an ONNX model."""
