"""On-disk formats: validated safetensors, PEFT LoRA folders, and hydracat bundles."""
