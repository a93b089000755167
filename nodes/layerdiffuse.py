"""LayerDiffuse's official sequential pipelines: the conditional models, and flattening RGBA onto grey."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..layerfusion_core.patching.layerdiffuse_conditional import layerdiffuse_conditional
from ..layerfusion_core.patching.model_info import unet_shapes
from ..layerfusion_core.transparency.codec import flatten_on_grey, rgba_planes
from ..layerfusion_core.weights import known_files
from ..layerfusion_core.weights.lora_files import LoRAFileError, load_conditional
from .common import CATEGORY, node_error, require_finite, require_sdxl

COND = "LayerFusion LayerDiffuse Conditional"
FLATTEN = "LayerFusion Flatten Alpha"


class LayerFusionLayerDiffuseCond(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LayerFusionLayerDiffuseCond",
            display_name=COND,
            category=CATEGORY,
            description=(
                "LayerDiffuse's conditional SDXL models, the sequential route: foreground -> blend (layer_xl_fg2ble), "
                "background -> blend (bg2ble), foreground + blend -> background (fgble2bg), background + blend -> "
                "foreground (bgble2fg, decode it with Transparent Decode). The condition latents reach the UNet as "
                "concatenated input; stop_at ends the patch and the condition part-way through the same run."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The SDXL model (not changed; a patched copy is returned)."),
                io.Conditioning.Input("positive", tooltip="The prompt of the layer to generate."),
                io.Conditioning.Input("negative", tooltip="The negative prompt."),
                io.Latent.Input("condition", tooltip="The first condition: the foreground (fg2ble, fgble2bg) or the background "
                                                     "(bg2ble, bgble2fg), VAE-encoded; RGBA images flattened onto grey first."),
                io.Combo.Input("model_name", options=known_files.list_files(known_files.LAYER_MODEL_FOLDER),
                               tooltip="layer_xl_fg2ble, _bg2ble, _fgble2bg or _bgble2fg from models/layer_model."),
                io.Float.Input("weight", default=1.0, min=-2.0, max=3.0, step=0.05, tooltip="Strength of the conditional model."),
                io.Float.Input("stop_at", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="After this fraction of the schedule the patch and the condition are dropped (1: never)."),
                io.Latent.Input("condition_2", optional=True,
                                tooltip="The second condition of fgble2bg and bgble2fg: the blend, VAE-encoded."),
            ],
            outputs=[io.Model.Output("model_out", display_name="model"),
                     io.Conditioning.Output("positive_out", display_name="positive"),
                     io.Conditioning.Output("negative_out", display_name="negative")],
        )

    @classmethod
    def execute(cls, model, positive, negative, condition: dict, model_name: str, weight: float, stop_at: float,
                condition_2: dict | None = None) -> io.NodeOutput:
        require_sdxl(COND, model)
        for name, latent in (("condition", condition), ("condition_2", condition_2)):
            require_finite(COND, name, None if latent is None else latent["samples"])
        for name, conds in (("positive", positive), ("negative", negative)):
            for tensor, _ in conds:
                require_finite(COND, name, tensor)
        try:
            lora, expected = load_conditional(known_files.resolve(model_name, (known_files.LAYER_MODEL_FOLDER,)), model.model,
                                              unet_shapes(model))
        except (FileNotFoundError, LoRAFileError) as err:
            raise node_error(COND, "model_name", str(err), "Choose one of LayerDiffuse's conditional SDXL files.") from None
        conditions = [c["samples"] for c in (condition, condition_2) if c is not None]
        if len(conditions) != expected:
            raise node_error(COND, "condition_2", f"{model_name} takes {expected} condition latent(s), {len(conditions)} given",
                             "fg2ble and bg2ble take one; fgble2bg and bgble2fg take two (the layer, then the blend).")
        if len({tuple(c.shape[-2:]) for c in conditions}) > 1 or len({c.shape[0] for c in conditions}) > 1:
            raise node_error(COND, "condition_2", f"the two conditions differ in size: {[tuple(c.shape) for c in conditions]}",
                             "Encode both at the generation's size.")
        return io.NodeOutput(*layerdiffuse_conditional(model, positive, negative, conditions, lora, weight, stop_at))


class LayerFusionFlattenAlpha(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LayerFusionFlattenAlpha",
            display_name=FLATTEN,
            category=CATEGORY,
            description="RGBA (or IMAGE + MASK) -> RGB flattened onto 50% grey, what LayerDiffuse's conditional models were "
                        "trained on (without it a black background leaks in). Feed the result to VAE Encode.",
            inputs=[io.Image.Input("image", tooltip="RGBA image, or RGB with a mask."),
                    io.Mask.Input("mask", optional=True, tooltip="Optional transparency, 1 = transparent (ComfyUI's convention).")],
            outputs=[io.Image.Output(tooltip="The colour over 50% grey.")],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, mask: torch.Tensor | None = None) -> io.NodeOutput:
        require_finite(FLATTEN, "image", image)
        require_finite(FLATTEN, "mask", mask)
        try:
            rgb, alpha = rgba_planes(image, mask)
        except ValueError as err:
            raise node_error(FLATTEN, "mask", str(err), "Match the mask batch to the image batch.") from None
        flat = rgb if alpha is None else flatten_on_grey(rgb, alpha)
        return io.NodeOutput(flat.movedim(1, -1).contiguous())
