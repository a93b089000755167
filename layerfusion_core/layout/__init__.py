"""The three-stream batch layout: streams, the rows each stream and LoRA branch owns, and LATENT
dictionaries in that layout (plain torch, no ComfyUI)."""
