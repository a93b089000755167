"""The test-only loader node."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import tiny_sdxl
from .layout import LAYOUT_OPTION


class LayerFusionTestTinySDXL(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LayerFusionTestTinySDXL",
            display_name="LayerFusion (test) Tiny SDXL",
            category="LayerFusion/testing",
            description="TEST ONLY: a tiny random-weight model of the SDXL architecture (MODEL, CLIP, VAE).",
            inputs=[
                io.Combo.Input("variant", options=list(tiny_sdxl.VARIANTS), default="depth1",
                               tooltip="depth1: one transformer block per SDXL stage; full: SDXL's 70 blocks."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seed of the random weights."),
            ],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls, variant: str, seed: int) -> io.NodeOutput:
        built = tiny_sdxl.build(variant, seed)
        return io.NodeOutput(built.model, built.clip, built.vae)


class LayerFusionTestLayeredBatch(io.ComfyNode):
    """Marks a model's batches as the LayerFusion layout, as LayerFusion Apply will, with nothing else."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LayerFusionTestLayeredBatch",
            display_name="LayerFusion (test) Layered Batch",
            category="LayerFusion/testing",
            description="TEST ONLY: run this model's batches as [fg, bg, blend] * N without any blending.",
            inputs=[io.Model.Input("model", tooltip="The model to mark (it is cloned).")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        marked = model.clone()
        options = dict(marked.model_options.get("transformer_options", {}))
        options[LAYOUT_OPTION] = True
        marked.model_options["transformer_options"] = options
        return io.NodeOutput(marked)


class TestNodesExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [LayerFusionTestTinySDXL, LayerFusionTestLayeredBatch]
