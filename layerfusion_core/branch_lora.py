"""`BranchLoRA`: a LoRA that runs on the rows of one branch (fg, bg, blend) of a batch.

The model's own layers stay where they are: the LoRA is a torch forward hook on each target
Linear, attached and removed through ComfyUI's injection mechanism (``ModelPatcher.set_injections``,
see `patching.apply_branch_lora`). The hook adds ``scale * (x @ down^T) @ up^T`` to the layer's
fresh output on the branch's rows only, so the base weights stay shared by all streams, and
whatever ComfyUI does to the layer itself (an ordinary LoRA's weight patches, low-VRAM casting,
dynamic VRAM's per-layer state) keeps working: the hook never touches a weight, only the output.

The rows come from the UNet call in progress (`calls.CURRENT_CALL`, set on the thread that runs
that call). A hooked layer that runs outside such a call means the host called the UNet without
the pack's DIFFUSION_MODEL wrapper: an error, never a guess.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .calls import CURRENT_CALL, hook_point_error
from .rows import Branch

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

    def __deepcopy__(self, memo) -> "BranchLoRA":
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
            call = CURRENT_CALL.get()
            if call is None:
                raise hook_point_error(
                    NODE, f"{file_name} ran in a UNet call that the pack's DIFFUSION_MODEL wrapper did not see, so it "
                          "cannot tell which rows are its branch's"
                )
            call.lora_hits.setdefault(key, set()).add(index)
            x = args[0]
            rows = call.selector.rows_for(branch)
            # `out` is the layer's fresh output: adding in place saves a copy per layer
            if rows is None:
                return out.add_(factors.delta(x))
            if rows.numel() == 0:
                return out
            return out.index_add_(0, rows, factors.delta(x.index_select(0, rows)))

        return add_delta

    def __repr__(self) -> str:
        return f"BranchLoRA({self.file_name!r}, branch={self.branch.value}, layers={len(self.layers)})"
