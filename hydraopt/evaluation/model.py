"""The base model an evaluation runs on: a local Hugging Face model folder, loaded with transformers
(imported on first use: `pip install 'hydracat[quality]'`)."""

from pathlib import Path


def load_causal_lm(folder: Path, device: str | None = None):
    """(model in eval mode, tokenizer) from a local Hugging Face model folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if device:
        model.to(device)
    return model.eval(), tokenizer
