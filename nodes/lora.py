"""`LayerFusion LoRA Apply`: a LoRA on one branch (fg, bg, blend) of the three-stream batch, or all."""

from __future__ import annotations

from comfy_api.latest import io

from ..layerfusion_core.layout.rows import Branch
from ..layerfusion_core.patching.branch_lora import apply_branch_lora
from ..layerfusion_core.patching.model_info import unet_shapes
from ..layerfusion_core.weights import known_files
from ..layerfusion_core.weights.lora_files import LoRAFileError, load_lora
from .common import CATEGORY, node_error, require_sdxl

NODE = "LayerFusion LoRA Apply"


class LayerFusionLoraApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LayerFusionLoraApply",
            display_name=NODE,
            category=CATEGORY,
            description=(
                "Apply a LoRA to one branch of a LayerFusion batch (fg, bg or blend rows) or to all rows. It runs at "
                "sampling time on that branch's rows only; the checkpoint's weights stay shared. Takes LayerDiffuse's "
                "layer_xl_transparent_attn.safetensors (for the transparent foreground: branch fg) and ordinary LoRAs. "
                "On a plain batch (no LayerFusion Apply), fg and all patch every row: with the stock KSampler this "
                "alone generates single transparent images."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The SDXL model. It is not changed; a patched copy is returned."),
                io.Combo.Input(
                    "lora_name", options=known_files.lora_choices(),
                    tooltip="A file from models/layer_model (LayerDiffuse) or models/loras. Only .safetensors files are listed.",
                ),
                io.Combo.Input(
                    "branch", options=[b.value for b in Branch], default=Branch.FG.value,
                    tooltip="Which rows the LoRA runs on: fg (the transparent foreground), bg, blend, or all rows. "
                            "Full-delta files (layer_xl_transparent_conv) only work with 'all'.",
                ),
                io.Float.Input("weight", default=1.0, min=-2.0, max=3.0, step=0.05,
                               tooltip="LoRA strength: W + weight * (up @ down). 0 leaves the model's output unchanged."),
            ],
            outputs=[io.Model.Output(tooltip="A copy of the model with the LoRA on the chosen branch.")],
        )

    @classmethod
    def execute(cls, model, lora_name: str, branch: str, weight: float) -> io.NodeOutput:
        known = known_files.known_file(lora_name)
        if known is not None and known.arch == "sdxl":
            require_sdxl(NODE, model)
        try:
            path = known_files.resolve(lora_name)
            lora = load_lora(path, model.model, unet_shapes(model))
            patched = apply_branch_lora(model, lora, Branch(branch), weight)
        except FileNotFoundError as err:
            raise node_error(NODE, "lora_name", str(err), "Put the file in place and refresh the node list.") from None
        except LoRAFileError as err:
            raise node_error(NODE, "lora_name", str(err), "Choose a LoRA made for SDXL.") from None
        except ValueError as err:
            raise node_error(NODE, "branch", str(err), "Change the branch or the file.") from None
        return io.NodeOutput(patched)
