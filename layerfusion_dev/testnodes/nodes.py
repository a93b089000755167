"""The test-only loader node."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import tiny_flux, tiny_sdxl
from .layout import LAYOUT_OPTION
from .toy import LayerFusionToyCheckpoint, LayerFusionToyTransparentDecode


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


class LayerFusionTestTinySD15(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LayerFusionTestTinySD15",
            display_name="LayerFusion (test) Tiny SD1.5",
            category="LayerFusion/testing",
            description="TEST ONLY: a tiny random-weight model of the SD1.5 architecture (not SDXL).",
            inputs=[io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seed of the random weights.")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, seed: int) -> io.NodeOutput:
        return io.NodeOutput(tiny_sdxl.build_sd15_unet(seed))


class LayerFusionTestPoison(io.ComfyNode):
    """Puts one NaN or inf into a latent and an image, as a diverged sampler or an fp16 overflow would."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LayerFusionTestPoison",
            display_name="LayerFusion (test) Poison",
            category="LayerFusion/testing",
            description="TEST ONLY: copies of the inputs with one non-finite value.",
            inputs=[
                io.Combo.Input("value", options=["nan", "inf", "-inf"], tooltip="The value to put in."),
                io.Latent.Input("latent", optional=True, tooltip="A latent to poison."),
                io.Image.Input("image", optional=True, tooltip="An image to poison."),
            ],
            outputs=[io.Latent.Output(), io.Image.Output()],
        )

    @classmethod
    def execute(cls, value: str, latent: dict | None = None, image=None) -> io.NodeOutput:
        def poisoned(tensor):
            if tensor is None:
                return None
            out = tensor.clone()
            out.view(-1)[out.numel() // 2] = float(value)
            return out

        return io.NodeOutput(None if latent is None else {**latent, "samples": poisoned(latent["samples"])}, poisoned(image))


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


def _seed_input() -> io.Int.Input:
    return io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seed of the random weights.")


class LayerFusionTestTinyFluxModel(io.ComfyNode):
    """Stands in for UNETLoader with FLUX.1-dev in a FLUX workflow."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LayerFusionTestTinyFluxModel", display_name="LayerFusion (test) Tiny FLUX model",
            category="LayerFusion/testing", description="TEST ONLY: ComfyUI's FLUX.1-dev model class at a tiny random-weight size.",
            inputs=[_seed_input()], outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, seed: int) -> io.NodeOutput:
        return io.NodeOutput(tiny_flux.build_model(seed))


class LayerFusionTestTinyFluxClip(io.ComfyNode):
    """Stands in for DualCLIPLoader (clip_l + t5xxl, type flux)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LayerFusionTestTinyFluxClip", display_name="LayerFusion (test) Tiny FLUX CLIP",
            category="LayerFusion/testing", description="TEST ONLY: ComfyUI's FLUX CLIP (CLIP-L + T5, real tokenizers), narrowed.",
            inputs=[_seed_input()], outputs=[io.Clip.Output()],
        )

    @classmethod
    def execute(cls, seed: int) -> io.NodeOutput:
        return io.NodeOutput(tiny_flux.build_clip(seed))


class LayerFusionTestTinyFluxVae(io.ComfyNode):
    """Stands in for VAELoader with ae.safetensors."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LayerFusionTestTinyFluxVae", display_name="LayerFusion (test) Tiny FLUX VAE",
            category="LayerFusion/testing", description="TEST ONLY: a 16-channel VAE shaped like ComfyUI's FLUX VAE, narrowed.",
            inputs=[_seed_input()], outputs=[io.Vae.Output()],
        )

    @classmethod
    def execute(cls, seed: int) -> io.NodeOutput:
        return io.NodeOutput(tiny_flux.build_vae(seed))


class TestNodesExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [LayerFusionTestTinySDXL, LayerFusionTestTinySD15, LayerFusionTestPoison, LayerFusionTestLayeredBatch,
                LayerFusionTestTinyFluxModel, LayerFusionTestTinyFluxClip, LayerFusionTestTinyFluxVae,
                LayerFusionToyCheckpoint, LayerFusionToyTransparentDecode]
