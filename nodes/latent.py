"""Latent nodes for the layered layout: make an empty layered batch, split one into streams."""

from __future__ import annotations

import comfy.model_management
from comfy_api.latest import io

from ..layerfusion_core.layout.latents import empty_layered_latent, layout_of, split_layered_latent
from ..layerfusion_core.layout.streams import MAX_FOREGROUNDS, Layout, Stream
from .common import CATEGORY, MAX_RESOLUTION, node_error, require_finite


class LayerFusionEmptyLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LayerFusionEmptyLatent",
            display_name="LayerFusion Empty Latent",
            category=CATEGORY,
            description=(
                "An empty latent batch for LayerFusion: each layered set is its foreground rows, then the background and "
                "the blend, interleaved as [fg, bg, blend] * sets (with several foregrounds [fg_1..fg_K, bg, blend] * sets)."
            ),
            inputs=[
                io.Int.Input("width", default=1024, min=64, max=MAX_RESOLUTION, step=8,
                             tooltip="Image width in pixels (a multiple of 8)."),
                io.Int.Input("height", default=1024, min=64, max=MAX_RESOLUTION, step=8,
                             tooltip="Image height in pixels (a multiple of 8)."),
                io.Int.Input("sets", default=1, min=1, max=64,
                             tooltip="How many layered sets (fg + bg + blend) to generate; the batch has 3x as many rows "
                                     "(foregrounds + 2 times as many)."),
                io.Int.Input("foregrounds", default=1, min=1, max=MAX_FOREGROUNDS, optional=True,
                             tooltip="Transparent foregrounds per set, each its own layer: as many as LayerFusion Conditioning "
                                     "has foreground prompts (fg, fg_2, ..)."),
            ],
            outputs=[io.Latent.Output(tooltip="The empty latent rows, [fg, bg, blend] * sets ([fg_1..fg_K, bg, blend] * sets).")],
        )

    @classmethod
    def execute(cls, width: int, height: int, sets: int, foregrounds: int = 1) -> io.NodeOutput:
        device = comfy.model_management.intermediate_device()
        return io.NodeOutput(empty_layered_latent(sets, width, height, device=device, layout=Layout(foregrounds)))


class LayerFusionSplit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LayerFusionSplit",
            display_name="LayerFusion Split",
            category=CATEGORY,
            description="Split a LayerFusion batch of 3 x N rows into its foreground, background and blend latents (N rows each; "
                        "with K foregrounds per set, fg has K x N rows, set by set).",
            inputs=[io.Latent.Input("latent", tooltip="A LayerFusion batch ([fg, bg, blend] * N rows), e.g. from a KSampler.")],
            outputs=[
                io.Latent.Output("fg", display_name="fg",
                                 tooltip="The foreground rows (K per set, set by set, the bottom one first)."),
                io.Latent.Output("bg", display_name="bg", tooltip="The background rows."),
                io.Latent.Output("blend", display_name="blend", tooltip="The blended (composite) rows."),
            ],
        )

    @classmethod
    def execute(cls, latent: dict) -> io.NodeOutput:
        require_finite("LayerFusion Split", "latent", latent["samples"])
        rows, layout = latent["samples"].shape[0], layout_of(latent)
        if rows % layout.per_set:
            raise node_error(
                "LayerFusion Split", "latent", f"has {rows} rows, expected a multiple of {layout.per_set} ({layout.describe()})",
                "Start the batch with LayerFusion Empty Latent and keep it whole until this node.",
            )
        parts = split_layered_latent(latent)
        return io.NodeOutput(parts[Stream.FG], parts[Stream.BG], parts[Stream.BLEND])
