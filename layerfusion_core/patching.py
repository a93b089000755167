"""The one module that touches ComfyUI's patch machinery (ModelPatcher injections, weight
patches, wrappers, transformer_options). The maths it runs are plain functions elsewhere.

Per-branch LoRA at run time
---------------------------
ComfyUI's weight patches change a weight for the whole batch, and its per-cond LoRA hooks run
each hook group as a separate UNet call (which would break the exchange between streams). So a
branch LoRA is a torch forward hook on each target Linear (`BranchLoRA`, branch_lora.py) that adds
``scale * (x @ down^T) @ up^T`` to the layer's output on the rows of its branch only; the layers
themselves stay in the model, so the base weights stay shared by all streams and ComfyUI's own
loading (weight patches, low-VRAM casting, dynamic VRAM) runs on them unchanged. The hooks are
attached and removed by a model injection (``ModelPatcher.set_injections``): ComfyUI injects when
it loads the patched model and ejects when it unloads it or loads another clone. Chained LoRAs
stack (each one its own injection, under a key of its own).

Which rows belong to which branch is decided once per UNet call by a DIFFUSION_MODEL wrapper
(`_on_unet_call`), from the batch size, ``cond_or_uncond`` and whether the model runs the
LayerFusion layout (``transformer_options[LAYOUT_OPTION]``, set by `enable_layered_batch`). The
wrapper hands it to the call in its transformer_options (``CALL_OPTION``: the attention patches
read it from their ``extra_options``) and, for the branch LoRA hooks, which see no options, in a
context variable set on the thread that runs the call, for that call only: nothing survives the
call and no state lives on nodes or in globals. After the call it checks that every branch LoRA
reached every one of its layers (`HookPointError` otherwise).

LayerFusion
-----------
`apply_layerfusion` adds, on a clone: attn1/attn2 patches (before the projections) that read
the priors by projecting the FG cond rows alone with the block's own to_q and to_k (the content
map in every block, the structure prior once per generation in the structure block), attn1/attn2
output patches (the blends, after ``to_out``), and a SAMPLER_SAMPLE wrapper that holds one
generation's `FusionRun` (in the run's own copy of transformer_options, ``RUN_OPTION``, which
ComfyUI hands to every UNet call on whatever thread runs it) and runs the prior pass. After each
run it checks that every patch ran (`HookPointError` otherwise: no silent no-op). It
uses no replace slot: attention itself runs as ComfyUI (or another pack's replace patch) runs it,
and no projected keys or values are kept alive longer than ComfyUI keeps them.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid

import torch

import comfy.model_patcher
import comfy.patcher_extension

from . import priors
from .branch_lora import BranchLoRA, LayerFactors
from .calls import CURRENT_CALL, CallContext, HookPointError, hook_point_error, host_version
from .fusion import BlockKey, FusionRun, FusionSettings, MaskRecorder, Phase
from .lora_files import LoadedLoRA
from .rows import FULL_STREAMS, BatchLayoutError, Branch, RowSelector, stream_view
from .streams import STREAMS_PER_SET, Stream

# re-exported from rows.py, branch_lora.py and calls.py
__all__ = ["BatchLayoutError", "Branch", "BranchLoRA", "HookPointError", "RowSelector", "host_version"]

log = logging.getLogger(__name__)

LAYOUT_OPTION = "layerfusion_layout"  # transformer_options flag: the batch is [fg, bg, blend] * N
ROWS_WRAPPER_KEY = "layerfusion.rows"
BRANCH_LORA_OPTION = "layerfusion_branch_loras"  # transformer_options: {injection key: BranchLoRA} of this model
BRANCH_LORA_KEY = "layerfusion.branch_lora"  # injection keys: this prefix and one id per LoRA Apply


RUN_OPTION = "layerfusion_run"  # transformer_options of one sampling run: its FusionRun
CALL_OPTION = "layerfusion_call"  # transformer_options of one UNet call: its CallContext


class _PriorReady(Exception):
    """Ends the prior pass as soon as the structure prior exists."""


def _take_rows(value, rows: torch.Tensor, batch: int):
    """``value`` with only ``rows`` of every tensor whose first axis is the batch (nested lists/dicts too)."""
    if isinstance(value, torch.Tensor):
        return value[rows] if value.ndim and value.shape[0] == batch else value
    if isinstance(value, dict):
        return {k: _take_rows(v, rows, batch) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_take_rows(v, rows, batch) for v in value)
    return value


def _on_unet_call(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
    """DIFFUSION_MODEL wrapper: publish the call's rows (for branch LoRAs) and, in a LayerFusion run,
    decide extraction and blending; in the prior pass, run the FG rows alone."""
    cond_or_uncond = list(transformer_options.get("cond_or_uncond", [0]))
    chunks = len(cond_or_uncond)
    run = transformer_options.get(RUN_OPTION)
    layered = bool(transformer_options.get(LAYOUT_OPTION))
    sigma = float(transformer_options["sigmas"].max()) if "sigmas" in transformer_options else float("inf")
    if run is not None and run.phase is Phase.PRIOR_PASS:
        rows = RowSelector(x.shape[0], chunks, FULL_STREAMS, x.device).rows_for(Branch.FG)
        batch = x.shape[0]
        extract, _ = run.begin_call(sigma)
        call = CallContext(RowSelector(rows.numel(), chunks, (Stream.FG,), x.device), cond_or_uncond, run, extract,
                           unet=getattr(executor, "class_obj", None))
        fg_out = _run_call(executor, call, _take_rows((x, timesteps, context, y, control), rows, batch),
                           transformer_options, _take_rows(kwargs, rows, batch))
        if run.prior is not None:
            raise _PriorReady
        out = torch.zeros_like(x)
        out[rows] = fg_out
        return out
    selector = RowSelector(x.shape[0], chunks, FULL_STREAMS if layered or run is not None else None, x.device)
    extract, blend = run.begin_call(sigma) if run is not None else (False, False)
    blend_next = run is not None and run.settings.switches.any and sigma >= run.sigma_blend_end
    call = CallContext(selector, cond_or_uncond, run, extract, blend, blend_next, unet=getattr(executor, "class_obj", None))
    if blend:
        run.blend_calls += 1
    return _run_call(executor, call, (x, timesteps, context, y, control), transformer_options, kwargs)


def _run_call(executor, call: CallContext, args: tuple, transformer_options: dict, kwargs: dict):
    """One UNet call with ``call`` in its options and in `CURRENT_CALL`; then every branch LoRA
    of the model must have reached all of its layers."""
    token = CURRENT_CALL.set(call)
    try:
        out = executor(*args, {**transformer_options, CALL_OPTION: call}, **kwargs)
    finally:
        CURRENT_CALL.reset(token)
    for key, lora in transformer_options.get(BRANCH_LORA_OPTION, {}).items():
        reached = len(call.lora_hits.get(key, ()))
        if reached != len(lora.layers):
            raise hook_point_error(
                "LayerFusion LoRA Apply", f"{lora.file_name} on branch {lora.branch.value} reached {reached} of its "
                f"{len(lora.layers)} layers in a UNet call: ComfyUI did not apply the pack's model injection (forward hooks)"
            )
    return out


def compute_dtype(model: comfy.model_patcher.ModelPatcher) -> torch.dtype:
    """The dtype the UNet computes in (its weights', or the manual-cast one for fp8 weights)."""
    dtype = getattr(model.model, "manual_cast_dtype", None) or model.model_dtype() or torch.float32
    return dtype if dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float16


def unet_shapes(model: comfy.model_patcher.ModelPatcher) -> dict[str, torch.Size]:
    """``diffusion_model.``-prefixed UNet weight shapes as the checkpoint has them: ComfyUI keeps the
    last model's weight patches applied between runs (a padded input conv, say), so a weight it
    has backed up counts with its original shape."""
    shapes = {f"diffusion_model.{k}": v.shape for k, v in model.model.diffusion_model.state_dict().items()}
    for key, saved in model.backup.items():
        if key in shapes:
            shapes[key] = saved.weight.shape
    return shapes


def _ensure_rows_wrapper(model: comfy.model_patcher.ModelPatcher) -> None:
    kind = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
    if not model.get_wrappers(kind, ROWS_WRAPPER_KEY):
        model.add_wrapper_with_key(kind, ROWS_WRAPPER_KEY, _on_unet_call)


def apply_branch_lora(
    model: comfy.model_patcher.ModelPatcher, lora: LoadedLoRA, branch: Branch, weight: float
) -> comfy.model_patcher.ModelPatcher:
    """A clone of ``model`` with ``lora`` at ``weight`` on ``branch``; ``model`` is not changed.

    The Linear LoRAs run as forward hooks on their layers (`BranchLoRA`), attached by a model
    injection of their own. Full deltas and adapters that are not plain Linear LoRAs cannot run per
    row: with branch `all` they become ordinary ComfyUI weight patches, otherwise they are refused
    (before anything is applied)."""
    if lora.full_patches and branch is not Branch.ALL:
        raise ValueError(
            f"{lora.file_name}: {len(lora.full_patches)} of its weights are full deltas or non-Linear adapters, "
            f"which cannot run on the '{branch.value}' rows alone; use branch 'all' (the whole batch), or the "
            "attention LoRA (layer_xl_transparent_attn.safetensors) for the fg branch"
        )
    patched = model.clone()
    dtype = compute_dtype(model)
    layers = {  # cast once here, not at every call
        path: LayerFactors(factors.up.to(dtype), factors.down.to(dtype), factors.scale * weight)
        for path, factors in lora.low_rank.items()
    }
    if layers:
        hooks = BranchLoRA(f"{BRANCH_LORA_KEY}.{uuid.uuid4().hex}", layers, branch, lora.file_name)
        patched.set_injections(hooks.key, [comfy.patcher_extension.PatcherInjection(
            inject=lambda patcher: hooks.attach(patcher.model), eject=lambda patcher: hooks.detach(patcher.model))])
        # ComfyUI ejects and re-injects around many steps of a run; the factors' device copies go
        # only when the model itself is unloaded (ON_DETACH)
        patched.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_DETACH, hooks.key,
                                      lambda patcher, *args: hooks.release())
        options = dict(patched.model_options.get("transformer_options", {}))
        options[BRANCH_LORA_OPTION] = {**options.get(BRANCH_LORA_OPTION, {}), hooks.key: hooks}
        patched.model_options["transformer_options"] = options
    if lora.full_patches:
        applied = patched.add_patches(lora.full_patches, weight)
        if len(applied) != len(lora.full_patches):
            raise ValueError(f"{lora.file_name}: ComfyUI accepted {len(applied)} of {len(lora.full_patches)} weight patches")
    _ensure_rows_wrapper(patched)
    log.info(
        "%s on branch %s at weight %g: %d weights at run time, %d as weight patches%s",
        lora.file_name, branch.value, weight, len(lora.low_rank), len(lora.full_patches),
        f" ({lora.ignored_keys} text-encoder keys ignored)" if lora.ignored_keys else "",
    )
    return patched


def enable_layered_batch(model: comfy.model_patcher.ModelPatcher) -> comfy.model_patcher.ModelPatcher:
    """A clone of ``model`` that treats its batches as the LayerFusion layout ([fg, bg, blend] * N)."""
    patched = model.clone()
    options = dict(patched.model_options.get("transformer_options", {}))
    options[LAYOUT_OPTION] = True
    patched.model_options["transformer_options"] = options
    _ensure_rows_wrapper(patched)
    return patched


def branch_loras(model: comfy.model_patcher.ModelPatcher) -> list[BranchLoRA]:
    """The branch LoRAs a model carries, in the order they were applied."""
    return list(model.model_options.get("transformer_options", {}).get(BRANCH_LORA_OPTION, {}).values())


# ---- LayerFusion: priors, masks and blends in every transformer block -----------------------
FUSION_OPTION = "layerfusion"  # transformer_options: the LayerFusionPatch of this model
EOS_KEY = "layerfusion_eos"  # conditioning: the FG prompt's EOS token index (LayerFusion Conditioning)
FUSION_WRAPPER_KEY = "layerfusion.fusion"


@dataclasses.dataclass(frozen=True)
class LayerFusionPatch:
    settings: FusionSettings
    recorder: MaskRecorder
    keys: tuple[BlockKey, ...]  # every transformer block, where each run must have blended


def _block_key(extra_options: dict) -> BlockKey:
    block = extra_options["block"]
    return (block[0], int(block[1]), int(extra_options.get("block_index", 0)))


def _attention_module(unet: torch.nn.Module, key: BlockKey, kind: str) -> torch.nn.Module:
    """The CrossAttention ``attn1`` or ``attn2`` of the transformer block ComfyUI keys as ``key``."""
    from comfy.ldm.modules.attention import SpatialTransformer

    name, block_id, index = key
    block = unet.middle_block if name == "middle" else (unet.input_blocks if name == "input" else unet.output_blocks)[block_id]
    transformer = next(layer for layer in block if isinstance(layer, SpatialTransformer))
    return getattr(transformer.transformer_blocks[index], kind)


class _PriorProbe:
    """attn1/attn2 patch (before the projections): reads the priors of the FG cond rows by projecting
    those rows alone with the block's own to_q and to_k (the FG LoRA included), and leaves the
    attention itself, and every replace slot, to ComfyUI."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __call__(self, n, context, value, extra_options):
        call = extra_options.get(CALL_OPTION)
        if call is None or call.run is None or call.cond_chunk is None or call.unet is None:
            return n, context, value
        key = _block_key(extra_options)
        if self.kind == "attn1":
            wanted = call.extract and key == call.run.settings.structure_block
        else:
            wanted = call.run.phase is Phase.JOINT and call.blend_next
        if wanted:
            self._read(call, key, n, n if context is None else context, extra_options)
        return n, context, value

    def _read(self, call: CallContext, key: BlockKey, n, context, extra_options) -> None:
        fg = call.selector.streams.index(Stream.FG)
        n_fg, ctx_fg = (stream_view(t, call.selector)[call.cond_chunk, :, fg] for t in (n, context))
        attention = _attention_module(call.unet, key, self.kind)
        rows_only = dataclasses.replace(call, selector=RowSelector(n_fg.shape[0], 1, (Stream.FG,), n.device))
        token = CURRENT_CALL.set(rows_only)  # the projections' branch LoRAs see these rows as fg rows
        try:
            q, k = attention.to_q(n_fg), attention.to_k(ctx_fg)
        finally:
            CURRENT_CALL.reset(token)
        heads = extra_options["n_heads"]
        if self.kind == "attn1":
            call.run.set_prior(priors.structure_prior(q, k, heads), tuple(extra_options["activations_shape"][-2:]))
        else:
            call.content[key] = call.run.last_content[key] = priors.content_confidence(q, k, heads, call.run.eos_index)


class _BlendOutput:
    """attn1/attn2 output patch: the attention-level blend of the three streams."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __call__(self, n: torch.Tensor, extra_options: dict) -> torch.Tensor:
        call = extra_options.get(CALL_OPTION)
        if call is None or not call.blend:
            return n
        run, key = call.run, _block_key(extra_options)
        grid = tuple(extra_options["activations_shape"][-2:])
        if grid not in call.structure:
            call.structure[grid] = priors.resize_map(run.prior, run.prior_grid, grid)
        content = call.content.get(key) if self.kind == "attn2" else run.last_content.get(key)
        soft, hard = priors.masks(call.structure[grid], content, run.settings.d)
        if self.kind == "attn2":
            run.recorder.soft[(key, run.step)] = soft.detach().view(-1, *grid).half()
        run.recorder.blended.add((self.kind, key))
        streams = stream_view(n, call.selector)  # [chunks, sets, 3, M, D]: each chunk with the same masks
        fg, bg, bl = (streams[:, :, int(s)] for s in (Stream.FG, Stream.BG, Stream.BLEND))
        new = priors.blend(fg, bg, bl, soft, hard, run.settings.bg_mode, run.settings.switches)
        for s, value in zip((Stream.FG, Stream.BG, Stream.BLEND), new):  # n is to_out's fresh output
            streams[:, :, int(s)] = value
        return n


def _eos_index(guider) -> int:
    conds = getattr(guider, "conds", {}) or {}
    for name in ["positive", *[k for k in conds if k != "positive"]]:
        for cond in conds.get(name, []) or []:
            if EOS_KEY in cond:
                return int(cond[EOS_KEY])
    raise ValueError(
        "LayerFusion Apply: the positive conditioning does not come from LayerFusion Conditioning (which records the "
        "foreground prompt's end token); connect LayerFusion Conditioning's positive to the sampler."
    )


def _hook_point_error(what: str) -> HookPointError:
    return hook_point_error("LayerFusion Apply", what)


def _check_fusion_ran(run: FusionRun, keys: tuple[BlockKey, ...], calls: int) -> None:
    """After a LayerFusion run (or its prior pass, of ``calls`` UNet calls seen): the wrapper saw
    the UNet calls, the prior was taken, and every transformer block blended in attn1 and attn2
    whenever a call blended. Raises `HookPointError`."""
    if calls == 0:
        raise _hook_point_error("the sampler ran the UNet without LayerFusion's DIFFUSION_MODEL wrapper, so nothing "
                                "was blended and the three streams ran independently")
    if run.prior is None:
        raise _hook_point_error(f"the structure prior was never taken: the attn1 patch of block "
                                f"{run.settings.structure_block} did not run")
    if run.blend_calls:
        missing = [(kind, key) for key in keys for kind in ("attn1", "attn2") if (kind, key) not in run.recorder.blended]
        if missing:
            raise _hook_point_error(f"the blend did not run in {len(missing)} of {2 * len(keys)} attention layers (e.g. "
                                    f"{missing[0][0]} of block {missing[0][1]}): ComfyUI did not call the pack's "
                                    "attention output patches there")


def _fusion_sample(executor, guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar):
    """SAMPLER_SAMPLE wrapper: one LayerFusion generation (the prior pass first, when chosen).

    The run's state travels in the sampling run's transformer_options (a copy for this run), which
    ComfyUI hands to every UNet call, on whatever thread runs it."""
    model_options = extra_args["model_options"]
    patch: LayerFusionPatch = model_options["transformer_options"][FUSION_OPTION]
    if noise.shape[0] % STREAMS_PER_SET:  # before any step: the same check the first UNet call would make
        raise BatchLayoutError(
            f"LayerFusion Apply: the sampler's latent has {noise.shape[0]} rows, expected a multiple of {STREAMS_PER_SET} "
            "(fg, bg, blend per layered set). Start it with LayerFusion Empty Latent and do not change its batch size."
        )
    if "multigpu_clones" in model_options:
        raise ValueError(
            "LayerFusion Apply: this model is spread over several GPUs (ComfyUI's multi-GPU clones), which run the "
            "positive and negative batches on different devices at the same time; LayerFusion's masks for both come "
            "from the foreground's positive rows of the same step, so it cannot run that way. Sample this model on one GPU."
        )
    settings = patch.settings
    sampling = guider.inner_model.model_sampling
    steps = [float(s) for s in sigmas[:-1]]
    sigma_extract = max(sampling.percent_to_sigma(1.0 - settings.prior_at), min(steps) if steps else 0.0)
    patch.recorder.clear()
    run = FusionRun(
        settings, _eos_index(guider), sigma_extract,
        sampling.percent_to_sigma(settings.blend_start), sampling.percent_to_sigma(settings.blend_end), patch.recorder,
    )
    options = {**model_options, "transformer_options": {**model_options["transformer_options"], RUN_OPTION: run}}
    extra_args = {**extra_args, "model_options": options}
    if settings.prior_mode.value == "prior_pass":
        run.phase = Phase.PRIOR_PASS
        try:
            executor(guider, sigmas, extra_args, None, noise.clone(), latent_image, denoise_mask, True)
        except _PriorReady:
            pass
        if steps:
            _check_fusion_ran(run, patch.keys, run.recorder.prior_pass_calls)
        run.start_joint_run()
    out = executor(guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)
    if steps:
        _check_fusion_ran(run, patch.keys, run.recorder.joint_calls)
    return out


def transformer_keys(model: comfy.model_patcher.ModelPatcher) -> list[BlockKey]:
    """Every transformer block of the UNet as ComfyUI keys its patches, in the order they run."""
    from comfy.ldm.modules.attention import SpatialTransformer

    unet = model.model.diffusion_model
    keys: list[BlockKey] = []
    groups = [("input", list(unet.input_blocks)), ("middle", [unet.middle_block]), ("output", list(unet.output_blocks))]
    for name, blocks in groups:
        for block_id, block in enumerate(blocks):
            for layer in block:
                if isinstance(layer, SpatialTransformer):
                    keys += [(name, block_id, i) for i in range(len(layer.transformer_blocks))]
    return keys


def apply_layerfusion(model: comfy.model_patcher.ModelPatcher, settings: FusionSettings) -> comfy.model_patcher.ModelPatcher:
    """A clone of an SDXL ``model`` that runs LayerFusion on [fg, bg, blend] * N batches."""
    import comfy.model_base

    if not isinstance(model.model, comfy.model_base.SDXL):
        raise TypeError(f"expected an SDXL model, got {type(model.model).__name__}")
    if fusion_patch(model) is not None:
        raise TypeError("this model already went through LayerFusion Apply; use one LayerFusion Apply per model")
    keys = transformer_keys(model)
    if not keys:
        raise TypeError("this model has no transformer blocks to blend")
    structure_block = settings.structure_block if settings.structure_block in keys else keys[-1]
    settings = dataclasses.replace(settings, structure_block=structure_block)
    patched = enable_layered_batch(model)
    patched.set_model_attn1_patch(_PriorProbe("attn1"))
    patched.set_model_attn2_patch(_PriorProbe("attn2"))
    patched.set_model_attn1_output_patch(_BlendOutput("attn1"))
    patched.set_model_attn2_output_patch(_BlendOutput("attn2"))
    options = dict(patched.model_options["transformer_options"])
    options[FUSION_OPTION] = LayerFusionPatch(settings, MaskRecorder(), tuple(keys))
    patched.model_options["transformer_options"] = options
    kind = comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE
    patched.remove_wrappers_with_key(kind, FUSION_WRAPPER_KEY)
    patched.add_wrapper_with_key(kind, FUSION_WRAPPER_KEY, _fusion_sample)
    log.info("LayerFusion on %d transformer blocks; structure prior from %s; %s", len(keys), structure_block, settings)
    return patched


def fusion_patch(model: comfy.model_patcher.ModelPatcher) -> LayerFusionPatch | None:
    return model.model_options.get("transformer_options", {}).get(FUSION_OPTION)


# ---- LayerDiffuse's conditional models (the sequential pipelines) ---------------------------
CONCAT_KEY = "noise_concat"  # conditioning: latents ComfyUI concatenates to the UNet input (c_concat)
CONDITION_WRAPPER_KEY = "layerfusion.condition_size"


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

    from .lora_files import INPUT_CONV

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
