"""Per-branch LoRA at run time: a LoRA that runs on the rows of one branch (fg, bg, blend) of a batch.

ComfyUI's weight patches change a weight for the whole batch, and its per-cond LoRA hooks run each
hook group as a separate UNet call (which would break the exchange between streams).

The model's own layers stay where they are: the LoRA is a torch forward hook on each target
Linear, attached and removed through ComfyUI's injection mechanism (``ModelPatcher.set_injections``,
see `apply_branch_lora`). The hook adds ``scale * (x @ down^T) @ up^T`` to the layer's
fresh output on the branch's rows only, so the base weights stay shared by all streams, and
whatever ComfyUI does to the layer itself (an ordinary LoRA's weight patches, low-VRAM casting,
dynamic VRAM's per-layer state) keeps working: the hook never touches a weight, only the output.

The rows come from the UNet call in progress (`calls.CURRENT_ROWS`, set on the thread that runs
that call). A hooked layer that runs outside such a call means the host called the UNet without
the pack's DIFFUSION_MODEL wrapper: an error, never a guess.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid

import comfy.model_patcher
import comfy.patcher_extension
import torch
import torch.nn.functional as F

from ..layout.rows import Branch
from ..weights.lora_files import LoadedLoRA
from .calls import CURRENT_ROWS, ensure_rows_wrapper
from .hook_points import hook_point_error
from .model_info import compute_dtype
from .options import BRANCH_LORA_KEY, BRANCH_LORA_OPTION, set_transformer_option, transformer_option

log = logging.getLogger(__name__)

NODE = "LayerFusion LoRA Apply"


@dataclasses.dataclass(frozen=True)
class LayerFactors:
    """One layer's factors: ``up`` ``[out, r]``, ``down`` ``[r, in]`` (in the compute dtype) and the
    scale. The factors are copied to a call's device and dtype once and kept there (``placed``)
    until the model is unloaded (`BranchLoRA.release`), not at every call."""

    up: torch.Tensor
    down: torch.Tensor
    scale: float
    placed: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)  # (device, dtype) -> (down, up)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """``scale * (x @ down^T) @ up^T`` for ``x`` ``[..., in]``."""
        key = (x.device, x.dtype)
        factors = self.placed.get(key)
        if factors is None:
            factors = self.placed[key] = (self.down.to(device=x.device, dtype=x.dtype), self.up.to(device=x.device, dtype=x.dtype))
        down, up = factors
        return F.linear(F.linear(x, down), up) * self.scale


class BranchLoRA:
    """One LoRA Apply: its factors per module path, its branch, and the hooks it has attached.

    ``key`` names it among the model's injections: unique per application, since ComfyUI takes
    two patchers with the same injection keys for the same weights. The hooks are attached to the
    model the injection is given (a multi-GPU clone has a model of its own) and removed from it
    again; attaching twice, or detaching what was never attached, changes nothing.
    """

    def __init__(self, key: str, layers: dict[str, LayerFactors], branch: Branch, file_name: str) -> None:
        self.key, self.layers, self.branch, self.file_name = key, layers, branch, file_name
        self._handles: dict[int, list[torch.utils.hooks.RemovableHandle]] = {}  # id(model) -> its hooks

    def __deepcopy__(self, memo) -> BranchLoRA:
        # ComfyUI deep-copies model_options on every clone: the factors are never changed and the
        # injection that attaches them is shared by the clones already, so share this too (no
        # second copy of the LoRA per clone, and one record of the hooks attached)
        return self

    def attach(self, model: torch.nn.Module) -> None:
        if id(model) in self._handles:
            return
        handles = []
        try:
            for index, (path, factors) in enumerate(self.layers.items()):
                handles.append(model.get_submodule(path).register_forward_hook(self._hook(index, factors)))
        except AttributeError as err:
            for handle in handles:
                handle.remove()
            raise hook_point_error(NODE, f"{self.file_name}: the model has no layer to hook ({err})") from None
        self._handles[id(model)] = handles

    def detach(self, model: torch.nn.Module) -> None:
        for handle in self._handles.pop(id(model), []):
            handle.remove()

    def release(self) -> None:
        """Drop the factors' copies on the devices calls ran on (when the model leaves its device)."""
        for factors in self.layers.values():
            factors.placed.clear()

    def _hook(self, index: int, factors: LayerFactors):
        key, branch, file_name = self.key, self.branch, self.file_name

        def add_delta(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            rows_now = CURRENT_ROWS.get()
            if rows_now is None:
                raise hook_point_error(
                    NODE, f"{file_name} ran in a UNet call that the pack's DIFFUSION_MODEL wrapper did not see, so it "
                          "cannot tell which rows are its branch's"
                )
            rows_now.lora_hits.setdefault(key, set()).add(index)
            x = args[0]
            rows = rows_now.selector.rows_for(branch)
            # `out` is the layer's fresh output: adding in place saves a copy per layer
            if rows is None:
                return out.add_(factors.delta(x))
            if rows.numel() == 0:
                return out
            return out.index_add_(0, rows, factors.delta(x.index_select(0, rows)))

        return add_delta

    def __repr__(self) -> str:
        return f"BranchLoRA({self.file_name!r}, branch={self.branch.value}, layers={len(self.layers)})"


def apply_branch_lora(
    model: comfy.model_patcher.ModelPatcher, lora: LoadedLoRA, branch: Branch, weight: float
) -> comfy.model_patcher.ModelPatcher:
    """A clone of ``model`` with ``lora`` at ``weight`` on ``branch``; ``model`` is not changed.

    The Linear LoRAs run as forward hooks on their layers (`BranchLoRA`), attached by a model
    injection of their own (chained LoRAs stack, each under a key of its own). Full deltas and
    adapters that are not plain Linear LoRAs cannot run per row: with branch `all` they become
    ordinary ComfyUI weight patches, otherwise they are refused (before anything is applied)."""
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
                                      lambda patcher, *args, **kwargs: hooks.release())
        set_transformer_option(patched, BRANCH_LORA_OPTION, {**transformer_option(patched, BRANCH_LORA_OPTION, {}), hooks.key: hooks})
    if lora.full_patches:
        applied = patched.add_patches(lora.full_patches, weight)
        if len(applied) != len(lora.full_patches):
            raise ValueError(f"{lora.file_name}: ComfyUI accepted {len(applied)} of {len(lora.full_patches)} weight patches")
    ensure_rows_wrapper(patched)
    log.info(
        "%s on branch %s at weight %g: %d weights at run time, %d as weight patches%s",
        lora.file_name, branch.value, weight, len(lora.low_rank), len(lora.full_patches),
        f" ({lora.ignored_keys} text-encoder keys ignored)" if lora.ignored_keys else "",
    )
    return patched


def branch_loras(model: comfy.model_patcher.ModelPatcher) -> list[BranchLoRA]:
    """The branch LoRAs a model carries, in the order they were applied."""
    return list(transformer_option(model, BRANCH_LORA_OPTION, {}).values())
