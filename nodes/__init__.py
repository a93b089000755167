"""LayerFusion's ComfyUI nodes: thin classes over `layerfusion_core`."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .background import LayerFusionBackground
from .fusion import LayerFusionApply, LayerFusionConditioning, LayerFusionMasks
from .latent import LayerFusionEmptyLatent, LayerFusionSplit
from .layerdiffuse import LayerFusionFlattenAlpha, LayerFusionLayerDiffuseCond
from .layers import LayerFusionRecompose, LayerFusionSaveLayers
from .lora import LayerFusionLoraApply
from .native_layers import LayerFusionLayers
from .placement import LayerFusionPlacement
from .transparent import LayerFusionTransparentDecode, LayerFusionTransparentEncode

NODES: list[type[io.ComfyNode]] = [
    LayerFusionConditioning,
    LayerFusionEmptyLatent,
    LayerFusionSplit,
    LayerFusionApply,
    LayerFusionMasks,
    LayerFusionPlacement,
    LayerFusionBackground,
    LayerFusionLoraApply,
    LayerFusionTransparentDecode,
    LayerFusionTransparentEncode,
    LayerFusionLayerDiffuseCond,
    LayerFusionFlattenAlpha,
    LayerFusionRecompose,
    LayerFusionSaveLayers,
    LayerFusionLayers,
]


class LayerFusionExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
