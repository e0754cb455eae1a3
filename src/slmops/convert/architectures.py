"""The model architectures slmops converts, shared by the Hugging Face and the GGUF sources."""

# Text-generation architectures the onnxruntime-genai builder exports.
SUPPORTED_ARCHITECTURES = (
    "ChatGLMModel",
    "Ernie4_5ForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "GraniteForCausalLM",
    "HunYuanDenseV1ForCausalLM",
    "InternLM2ForCausalLM",
    "LlamaForCausalLM",
    "Lfm2ForCausalLM",
    "MistralForCausalLM",
    "NemotronForCausalLM",
    "OlmoForCausalLM",
    "PhiForCausalLM",
    "Phi3ForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "SmolLM3ForCausalLM",
)
