"""LayerFusion's conditioning, apply and masks nodes."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..layerfusion_core.fusion import conditioning as cond_core
from ..layerfusion_core.fusion import mask_pictures
from ..layerfusion_core.fusion.blending import BgMode, BlendSwitches
from ..layerfusion_core.fusion.settings import FusionSettings, PriorMode
from ..layerfusion_core.layout.streams import MAX_FOREGROUNDS
from ..layerfusion_core.patching.layerfusion import FusionModelError, apply_layerfusion, fusion_patch
from ..layerfusion_core.patching.options import EOS_KEY
from .common import CATEGORY, advanced, node_error, require_finite, require_sdxl
from .previews import intermediate_output, masks_preview

CONDITIONING = "LayerFusion Conditioning"
APPLY = "LayerFusion Apply"
MASKS = "LayerFusion Masks"
STRUCTURE_DEFAULT = "output 5 1"


def _encode(clip, text: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    tokens = clip.tokenize(text)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return cond, pooled, tokens


EXTRA_FOREGROUNDS = tuple(f"fg_{k}" for k in range(2, MAX_FOREGROUNDS + 1))


def _extra_foreground_inputs() -> list[io.String.Input]:
    inputs = []
    for name in EXTRA_FOREGROUNDS:
        inputs.append(io.String.Input(name, multiline=True, default="", optional=True,
                                      tooltip="Optional: one more transparent foreground, above the ones before it (z order: fg at "
                                              "the bottom). Each filled one adds a foreground row to every set: give LayerFusion "
                                              "Empty Latent as many foregrounds. Empty: not used."))
        inputs.append(io.String.Input(f"{name}_negative", multiline=True, default="", optional=True,
                                      tooltip=f"Optional: {name}'s own negative prompt (else fg_negative, else the shared one)."))
    return inputs


def _foregrounds(fg: str, fg_negative: str, extras: dict[str, str]) -> list[tuple[str, str]]:
    """(prompt, own negative) of each foreground in z order: fg, then the filled extra ones."""
    out = [(fg, fg_negative)]
    for name in EXTRA_FOREGROUNDS:
        prompt, own = extras.get(name, ""), extras.get(f"{name}_negative", "")
        if prompt.strip():
            out.append((prompt, own if own.strip() else fg_negative))
        elif own.strip():
            raise node_error(CONDITIONING, f"{name}_negative", f"is set but {name} is empty",
                             f"Write {name}'s prompt, or clear its negative.")
    return out


class LayerFusionConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LayerFusionConditioning",
            display_name=CONDITIONING,
            category=CATEGORY,
            description="Encode the foreground, background and blend prompts into one conditioning for the layered batch "
                        "(fg, bg, blend; with fg_2.. filled, several foregrounds, each its own transparent layer). Each stream "
                        "keeps its own prompt and its own guidance.",
            inputs=[
                io.Clip.Input("clip", tooltip="The SDXL checkpoint's CLIP."),
                io.String.Input("fg", multiline=True, default="", tooltip="The transparent foreground (the object alone)."),
                io.String.Input("bg", multiline=True, default="", tooltip="The background without the object."),
                io.String.Input("blend", multiline=True, default="",
                                tooltip="The composite. Empty: '<fg>, <bg>'."),
                io.String.Input("negative", multiline=True, default="", tooltip="The negative prompt shared by the streams."),
                io.String.Input("fg_negative", multiline=True, default="", optional=True,
                                tooltip="Optional: the foreground's own negative prompt (replaces the shared one)."),
                io.String.Input("bg_negative", multiline=True, default="", optional=True,
                                tooltip="Optional: the background's own negative prompt."),
                io.String.Input("blend_negative", multiline=True, default="", optional=True,
                                tooltip="Optional: the blend's own negative prompt."),
                *_extra_foreground_inputs(),
            ],
            outputs=[io.Conditioning.Output("positive_out", display_name="positive",
                                            tooltip="[fg.., bg, blend] prompts, for the sampler's positive."),
                     io.Conditioning.Output("negative_out", display_name="negative",
                                            tooltip="[fg.., bg, blend] negatives, for the sampler's negative.")],
        )

    @classmethod
    def execute(cls, clip, fg: str, bg: str, blend: str, negative: str, fg_negative: str = "", bg_negative: str = "",
                blend_negative: str = "", **extras: str) -> io.NodeOutput:
        if clip is None:
            raise node_error(CONDITIONING, "clip", "is empty", "Connect the checkpoint's CLIP.")
        fgs = _foregrounds(fg, fg_negative, extras)
        prompts = (*(p for p, _ in fgs), bg, cond_core.blend_prompt([p for p, _ in fgs], bg, blend))
        encoded = [_encode(clip, text) for text in prompts]
        negatives = [_encode(clip, own if own.strip() else negative) for own in (*(n for _, n in fgs), bg_negative, blend_negative)]
        pos, pos_pooled = cond_core.stack_streams([(c, p) for c, p, _ in encoded])
        neg, neg_pooled = cond_core.stack_streams([(c, p) for c, p, _ in negatives])
        eos = tuple(cond_core.eos_index(tokens) for _, _, tokens in encoded[:len(fgs)])
        return io.NodeOutput([[pos, {"pooled_output": pos_pooled, EOS_KEY: eos}]],
                             [[neg, {"pooled_output": neg_pooled}]])


class LayerFusionApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LayerFusionApply",
            display_name=APPLY,
            category=CATEGORY,
            description=(
                "LayerFusion: blend the foreground, background and blend streams of a LayerFusion batch at attention level in "
                "every transformer block, guided by masks read from the foreground's own attention. Feed the sampler "
                "LayerFusion Empty Latent and LayerFusion Conditioning; put the LayerDiffuse LoRA on the fg branch with "
                "LayerFusion LoRA Apply."
            ),
            inputs=[
                io.Model.Input("model", tooltip="An SDXL model (it is not changed; a patched copy is returned)."),
                io.Float.Input("d", default=10.0, min=0.0, max=100.0, step=0.5,
                               tooltip="Hardness of the hard mask: sigmoid(d * (soft - 0.5)). Higher: crisper."),
                io.Float.Input("prior_at", default=0.8, min=0.0, max=1.0, step=0.01,
                               tooltip="Where the structure prior is taken: the first step with timestep <= prior_at * T (0.8: early)."),
                io.Combo.Input("prior_mode", options=[m.value for m in PriorMode], default=PriorMode.PRIOR_PASS.value,
                               tooltip="prior_pass: the foreground runs alone up to prior_at first, then the joint run blends "
                                       "from blend_start (the paper's figure). in_run: cheaper; taken inside the joint run, no "
                                       "blending before it."),
                io.Float.Input("blend_start", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Blending starts at this fraction of the schedule."),
                io.Float.Input("blend_end", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Blending stops after this fraction of the schedule."),
                io.Combo.Input("bg_mode", options=[m.value for m in BgMode], default=BgMode.BG_FROM_BL.value,
                               tooltip="bg_from_bl: the background follows the composite outside the object. bl_from_bg: the "
                                       "composite takes the background outside the object and the background stays pure."),
                io.Boolean.Input("blend_blend", default=True, tooltip="Ablation switch: the object into the composite."),
                io.Boolean.Input("blend_fg", default=True, tooltip="Ablation switch: the harmonised composite back into the object."),
                io.Boolean.Input("blend_bg", default=True, tooltip="Ablation switch: the background exchange (see bg_mode)."),
                io.String.Input("structure_block", default=STRUCTURE_DEFAULT, optional=True, **advanced(),
                                tooltip="Advanced: the transformer block whose self-attention gives the structure prior, as "
                                        "'input|middle|output <id> <index>'. Default: SDXL's last, output 5 1 (on a model "
                                        "without it, that model's last). Taken at prior_at."),
                io.Float.Input("norm_quantile", default=1.0, min=0.5, max=1.0, step=0.01, optional=True, **advanced(),
                               tooltip="Advanced: the soft mask's normalisation tops out at this quantile of s' * c. 1.0: at its "
                                       "max (min-max, as the method states). Below 1 (e.g. 0.9): every token above it is 1, so a "
                                       "few bright outliers (a border row) cannot push the object under the hard mask's 0.5; "
                                       "at least 1 - norm_quantile of the picture is then fully masked."),
            ],
            outputs=[io.Model.Output(tooltip="The model with LayerFusion.")],
        )

    @classmethod
    def execute(cls, model, d: float, prior_at: float, prior_mode: str, blend_start: float, blend_end: float,
                bg_mode: str, blend_blend: bool, blend_fg: bool, blend_bg: bool,
                structure_block: str = STRUCTURE_DEFAULT, norm_quantile: float = 1.0) -> io.NodeOutput:
        require_sdxl(APPLY, model)
        if blend_end < blend_start:
            raise node_error(APPLY, "blend_end", f"{blend_end} is before blend_start {blend_start}", "Make blend_end >= blend_start.")
        try:
            block = mask_pictures.parse_block(structure_block, FusionSettings.structure_block)
        except ValueError as err:
            raise node_error(APPLY, "structure_block", str(err), f"Leave it at '{STRUCTURE_DEFAULT}' (SDXL's last block).") from None
        settings = FusionSettings(
            d=d, prior_at=prior_at, prior_mode=PriorMode(prior_mode), blend_start=blend_start, blend_end=blend_end,
            bg_mode=BgMode(bg_mode), switches=BlendSwitches(blend=blend_blend, fg=blend_fg, bg=blend_bg), structure_block=block,
            norm_quantile=norm_quantile,
        )
        try:
            return io.NodeOutput(apply_layerfusion(model, settings))
        except FusionModelError as err:
            raise node_error(APPLY, err.input_name, str(err), err.fix) from None


class LayerFusionMasks(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LayerFusionMasks",
            **intermediate_output(),
            display_name=MASKS,
            category=CATEGORY,
            description="Show the structure prior and the soft and hard masks LayerFusion used at one block and step of the "
                        "last run (the paper's Figure 2), one per layered set (with several foregrounds, one per foreground "
                        "of each set, set by set).",
            inputs=[
                io.Model.Input("model", tooltip="The model from LayerFusion Apply that went into the sampler."),
                io.Latent.Input("samples", tooltip="The sampler's output (so this runs after it; sets the picture size)."),
                io.String.Input("block", default=mask_pictures.DEFAULT_BLOCK,
                                tooltip="'structure': the block the structure prior comes from (SDXL's last, output 5 1); or any "
                                        "transformer block as 'input|middle|output <id> <index>', e.g. 'middle 0 0'."),
                io.Int.Input("step", default=-1, min=-1, max=10000,
                             tooltip="Sampling step (UNet call) of the joint run; -1: where the structure prior was taken."),
                io.Image.Input("blend_image", optional=True,
                               tooltip="Optional: the decoded blend image; the node then shows the soft mask over it."),
            ],
            outputs=[
                io.Mask.Output("structure", display_name="structure", tooltip="s': the structure prior."),
                io.Mask.Output("soft", display_name="soft", tooltip="The soft mask norm(s' * c) of that block and step."),
                io.Mask.Output("hard", display_name="hard", tooltip="The hard mask sigmoid(d * (soft - 0.5))."),
                io.Image.Output("preview", display_name="preview", tooltip="structure, soft and hard side by side, per set."),
            ],
        )

    @classmethod
    def execute(cls, model, samples: dict, block: str, step: int, blend_image: torch.Tensor | None = None) -> io.NodeOutput:
        require_finite(MASKS, "blend_image", blend_image)
        patch = fusion_patch(model)
        if patch is None:
            raise node_error(MASKS, "model", "has no LayerFusion Apply", "Connect the model that went into the sampler.")
        size = tuple(8 * s for s in samples["samples"].shape[-2:])
        try:
            structure, soft, hard = mask_pictures.maps(
                patch.records.record, mask_pictures.parse_block(block, patch.settings.structure_block), step, patch.settings.d, size)
        except ValueError as err:
            raise node_error(MASKS, "block", str(err), "Run the sampler first, then pick a block and step it recorded.") from None
        if blend_image is not None and tuple(blend_image.shape[1:3]) != tuple(soft.shape[-2:]):
            raise node_error(MASKS, "blend_image", f"is {tuple(blend_image.shape[1:3])}, the masks {tuple(soft.shape[-2:])}",
                             "Connect the VAE Decode of the blend stream of the same run.")
        if blend_image is not None:  # each set's composite under each of its foregrounds' masks
            blend_image = blend_image.repeat_interleave(patch.records.record.foregrounds, dim=0)
        return io.NodeOutput(structure, soft, hard, mask_pictures.side_by_side(structure, soft, hard),
                             ui=masks_preview(soft, blend_image))
