"""LayerFusion for ComfyUI: a transparent foreground, a background and their composite from one
SDXL sampling run.

This file only wires the pack into ComfyUI; everything runs inside `comfy_entrypoint`, which
ComfyUI calls after startup, so importing the pack stays cheap.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """ComfyUI's V3 extension entry point."""
    from .layerfusion_core.weights.known_files import register_model_folders
    from .nodes import LayerFusionExtension

    register_model_folders()
    return LayerFusionExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
