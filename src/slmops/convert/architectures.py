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


def causal_lm_of(architecture: str) -> str | None:
    """The supported class whose backbone ``architecture`` names (Qwen3Model -> Qwen3ForCausalLM), or None.

    Embedding models often ship the backbone alone (no LM head, keys without ``model.``);
    the builder reads such a checkpoint as the causal LM with the head left out.
    """
    if not architecture.endswith("Model") or architecture in SUPPORTED_ARCHITECTURES:
        return None
    causal = architecture.removesuffix("Model") + "ForCausalLM"
    return causal if causal in SUPPORTED_ARCHITECTURES else None
