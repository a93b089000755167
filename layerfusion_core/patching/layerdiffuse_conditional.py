"""LayerDiffuse's conditional models (the sequential pipelines fg -> blend -> bg and back) through
ComfyUI's own mechanisms: a static weight patch, a conditioning weight hook with keyframes, input
conditioning (c_concat) and an APPLY_MODEL wrapper that checks the condition latents' size."""

from __future__ import annotations

import logging

import comfy.model_patcher
import comfy.patcher_extension
import torch

from ..weights.lora_files import INPUT_CONV, LoadedLoRA
from .options import CONCAT_KEY, CONDITION_WRAPPER_KEY

log = logging.getLogger(__name__)


class ConditionSizeError(ValueError):
    pass


class _ConditionCheck:
    """APPLY_MODEL wrapper: the condition latents must come with the generation, at its size."""

    def __init__(self, condition_channels: int) -> None:
        self.condition_channels = condition_channels

    def __call__(self, executor, x, t, c_concat=None, *args, **kwargs):
        node = "LayerFusion LayerDiffuse Conditional"
        if c_concat is None or c_concat.shape[1] != self.condition_channels:
            raise ConditionSizeError(
                f"{node}: this model takes {self.condition_channels // 4} condition latent(s) through its conditioning; "
                "connect the positive and negative that come out of the same node to the sampler."
            )
        if tuple(c_concat.shape[-2:]) != tuple(x.shape[-2:]):
            h, w = (8 * s for s in c_concat.shape[-2:])
            gh, gw = (8 * s for s in x.shape[-2:])
            raise ConditionSizeError(
                f"{node}: the condition image is {w}x{h} but the generation is {gw}x{gh}; encode the condition at the "
                "generation's size (or make the empty latent its size)."
            )
        return executor(x, t, c_concat, *args, **kwargs)


def _hook_capable(model: comfy.model_patcher.ModelPatcher) -> comfy.model_patcher.ModelPatcher:
    """``model``, or, for current ComfyUI's dynamic-VRAM patcher (which implements no weight hooks),
    its non-dynamic delegate: ComfyUI's sampler would swap to it anyway when conditioning carries
    hooks (CFGGuider.inner_set_conds). Taken here, up front, so its cost is said once: the delegate
    is a second copy of the model's weights."""
    if not getattr(model, "is_dynamic", lambda: False)():
        return model
    log.warning(
        "LayerFusion LayerDiffuse Conditional: this model uses ComfyUI's dynamic VRAM, which runs no weight hooks; "
        "its non-dynamic copy is used instead (about %.1f GB more memory for the model's weights while it is loaded). "
        "Start ComfyUI with dynamic VRAM off to avoid the second copy.", model.model_size() / 2**30,
    )
    return model.get_non_dynamic_delegate()


def layerdiffuse_conditional(
    model: comfy.model_patcher.ModelPatcher, positive: list, negative: list, conditions: list[torch.Tensor],
    lora: LoadedLoRA, weight: float, stop_at: float,
) -> tuple[comfy.model_patcher.ModelPatcher, list, list]:
    """The conditional model's patch and its condition latents (raw, ``[B, 4, h, w]`` each) through
    ComfyUI's own mechanisms, with nothing changed on ``model``:

    - the input conv is zero-padded to take the extra channels: a static weight patch (ComfyUI's
      ``diff`` with ``pad_weight``) on a clone of the model;
    - the deltas (the widened input conv's included) are a conditioning weight hook on
      ``positive`` and ``negative`` whose strength drops to 0 at ``stop_at`` (a fraction of the
      schedule): ComfyUI re-patches the weights at that step, within the same run;
    - the condition latents are concatenated input conditioning on both.

    After ``stop_at`` the padded input conv weighs the condition channels by zero and every other
    weight is back to its own value: the plain model, within the same sampling run."""
    import comfy.hooks
    import comfy.weight_adapter


    model = _hook_capable(model)

    widened = lora.full_patches[INPUT_CONV][1][0]
    patches = dict(lora.full_patches)
    for path, factors in lora.low_rank.items():
        patches[f"{path}.weight"] = comfy.weight_adapter.LoRAAdapter(set(), (factors.up, factors.down, None, None, None, None))
    hook = comfy.hooks.WeightHook(strength_model=weight, strength_clip=0.0)
    hook.weights, hook.need_weight_init = patches, False
    keyframes = comfy.hooks.HookKeyframeGroup()
    keyframes.add(comfy.hooks.HookKeyframe(strength=1.0, start_percent=0.0))
    if stop_at < 1.0:
        keyframes.add(comfy.hooks.HookKeyframe(strength=0.0, start_percent=stop_at))
    group = comfy.hooks.HookGroup()
    group.add(hook)
    group.set_keyframes_on_hooks(keyframes)
    concat = torch.cat([model.model.process_latent_in(c) for c in conditions], dim=1)

    def conditioned(conds: list) -> list:
        hooked = comfy.hooks.set_hooks_for_conditioning(conds, group)
        return [[c, {**options, CONCAT_KEY: concat}] for c, options in hooked]

    patched = model.clone()
    patched.add_patches({INPUT_CONV: ("diff", (torch.zeros_like(widened), {"pad_weight": True}))}, 1.0)
    kind = comfy.patcher_extension.WrappersMP.APPLY_MODEL
    patched.remove_wrappers_with_key(kind, CONDITION_WRAPPER_KEY)
    patched.add_wrapper_with_key(kind, CONDITION_WRAPPER_KEY, _ConditionCheck(concat.shape[1]))
    log.info("%s at weight %g on %d condition latent(s), until %g of the schedule", lora.file_name, weight, len(conditions), stop_at)
    return patched, conditioned(positive), conditioned(negative)
