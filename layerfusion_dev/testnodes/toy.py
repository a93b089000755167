"""The toy world's nodes (dev only): its checkpoint loader and its transparent decode.

`LayerFusionToyCheckpoint` stands where `CheckpointLoaderSimple` stands in a shipped workflow (same
outputs); `LayerFusionToyTransparentDecode` where `LayerFusionTransparentDecode` stands (same outputs:
RGBA, RGB, MASK with ComfyUI's polarity, 1 = transparent). Why they exist: `toy_models`' docstring.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from . import toy_models
from .layout import foreground_rows

CATEGORY = "LayerFusion/toy world"


def _checkpoints() -> list[str]:
    return sorted(p.name for p in toy_models.FILES.glob("*.safetensors") if p.name != toy_models.FG_LORA) or [toy_models.CHECKPOINT]


class LayerFusionToyCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LayerFusionToyCheckpoint",
            display_name="LayerFusion (toy) Checkpoint",
            category=CATEGORY,
            description="DEV ONLY: the toy world's SDXL-architecture checkpoint (make toy-world), loaded by ComfyUI's own "
                        "detection and SDXL model config (v-prediction from its v_pred key).",
            inputs=[io.Combo.Input("ckpt_name", options=_checkpoints(), default=toy_models.CHECKPOINT,
                                   tooltip="A file in layerfusion_dev/toy_world/files.")],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls, ckpt_name: str) -> io.NodeOutput:
        path = toy_models.FILES / ckpt_name
        if not path.is_file():
            raise FileNotFoundError(f"LayerFusion (toy) Checkpoint: ckpt_name {ckpt_name!r} is not in {toy_models.FILES}; "
                                    "run `make toy-world` to train it")
        return io.NodeOutput(*toy_models.load_checkpoint(path))


class LayerFusionToyTransparentDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LayerFusionToyTransparentDecode",
            display_name="LayerFusion (toy) Transparent Decode",
            category=CATEGORY,
            description="DEV ONLY: the toy world's foreground RGBA: alpha from the latent's channel 3, colour from the VAE decode.",
            inputs=[io.Latent.Input("samples", tooltip="The sampler's latent (a LayerFusion batch: its fg rows are decoded)."),
                    io.Image.Input("images", tooltip="The VAE Decode of the same latent.")],
            outputs=[io.Image.Output("rgba", display_name="RGBA"), io.Image.Output("rgb", display_name="RGB"),
                     io.Mask.Output("mask", display_name="MASK", tooltip="1 = transparent (ComfyUI's polarity).")],
        )

    @classmethod
    def execute(cls, samples: dict, images: torch.Tensor) -> io.NodeOutput:
        latent = samples["samples"]
        rows = foreground_rows(samples)
        if images.shape[0] == latent.shape[0]:
            images = images[rows]
        rgba = toy_models.transparent_decode(latent[rows], images[..., :3])
        return io.NodeOutput(rgba, rgba[..., :3].contiguous(), 1.0 - rgba[..., 3])
