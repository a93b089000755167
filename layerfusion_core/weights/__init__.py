"""Weight files: the LayerDiffuse files users have (where ComfyUI keeps them), reading safetensors,
LoRA files, and the download helper."""
