"""`BranchLoRALinear`: a LoRA that runs on the rows of one branch (fg, bg, blend) of a batch.

It stands in for a Linear layer as a ComfyUI object patch (set by `patching.apply_branch_lora`):
``inner(x)`` for every row, plus ``scale * (x @ down^T) @ up^T`` on the branch's rows only, so the
base weights stay shared by all streams. The rows come from the UNet call in progress
(`calls.CURRENT_CALL`); outside one, the batch is plain. The wrapped layer holds the truth about
its weight and bias (ComfyUI may patch or move it while this proxy is out of the model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .calls import CURRENT_CALL
from .rows import Branch, RowSelector


# Attributes ComfyUI's model management reads and writes on a patched layer: the proxy hands them
# to the layer it wraps, so weight patches (LoraLoader), low-VRAM casting and offloading keep
# working on a layer that also carries a branch LoRA.
_DELEGATED = frozenset(
    {"comfy_cast_weights", "prev_comfy_cast_weights", "weight_function", "bias_function", "comfy_patched_weights"}
)
_SHARED_PARAMS = ("weight", "bias")


class BranchLoRALinear(torch.nn.Module):
    """``inner(x) + scale * (x @ down^T) @ up^T`` on the rows of ``branch`` (x: ``[B, ..., in]``).

    A transparent proxy for the Linear it replaces: it registers that layer's own ``weight`` and
    ``bias`` Parameters (the same objects) under the same path, so ComfyUI finds, loads, offloads
    and weight-patches them as before, and it forwards ComfyUI's per-layer bookkeeping to the
    wrapped layer, whose own forward (and casting) computes the base output. The wrapped layer is
    held outside the module tree, so it is not listed twice. The factors are ``lora_up`` ``[out, r]``
    and ``lora_down`` ``[r, in]``.
    """

    def __init__(self, inner: torch.nn.Module, up: torch.Tensor, down: torch.Tensor, scale: float, branch: Branch,
                 merged: bool = False) -> None:
        super().__init__()
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_merged_cache", None)  # (key, W + scale * up @ down) in the compute dtype
        for name in _SHARED_PARAMS:
            value = getattr(inner, name, None)
            if value is not None:
                self._parameters[name] = value
        self.lora_up = torch.nn.Parameter(up, requires_grad=False)
        self.lora_down = torch.nn.Parameter(down, requires_grad=False)
        self.scale = float(scale)
        self.branch = branch
        self.merged = merged

    @property
    def inner(self) -> torch.nn.Module:
        return self._inner

    def __getattr__(self, name: str):
        if name in _DELEGATED:
            return getattr(self._inner, name)
        if name in _SHARED_PARAMS and "_inner" in self.__dict__:
            self._refresh_shared()  # the wrapped layer holds the truth (another clone may have patched it)
        return super().__getattr__(name)

    def __setattr__(self, name: str, value) -> None:
        if name in _DELEGATED:
            setattr(self._inner, name, value)
            return
        if name in _SHARED_PARAMS and "_inner" in self.__dict__:
            setattr(self._inner, name, value)
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if name in _DELEGATED:
            delattr(self._inner, name)
            return
        super().__delattr__(name)

    def _refresh_shared(self) -> None:
        """Take the wrapped layer's current weight and bias: while this proxy is out of the model
        (another clone of the model loaded), ComfyUI patches and restores the layer itself."""
        for name in _SHARED_PARAMS:
            value = self._inner.__dict__.get("_parameters", {}).get(name)
            if value is not None and self._parameters.get(name) is not value:
                self._parameters[name] = value

    def _apply(self, fn, recurse=True):
        """Device and dtype moves go through this proxy: move the wrapped layer's own Parameters,
        and hand it any Parameter the move replaced."""
        self._refresh_shared()
        result = super()._apply(fn, recurse)
        for name in _SHARED_PARAMS:
            ours = self._parameters.get(name)
            if ours is not None and getattr(self._inner, name, None) is not ours:
                setattr(self._inner, name, ours)
        return result

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        down = self.lora_down.to(device=x.device, dtype=x.dtype)
        up = self.lora_up.to(device=x.device, dtype=x.dtype)
        return F.linear(F.linear(x, down), up) * self.scale

    def _merged_weight(self, x: torch.Tensor) -> torch.Tensor:
        """A second copy of the weight with the LoRA merged in (rebuilt if the weight changes)."""
        weight = self._parameters["weight"]
        # inference tensors (every weight ComfyUI's server loads, under torch.inference_mode) have no version counter
        key = (weight.data_ptr(), None if weight.is_inference() else weight._version, x.device, x.dtype)
        if self._merged_cache is None or self._merged_cache[0] != key:
            merged = weight.to(device=x.device, dtype=x.dtype) + self.delta_weight(x)
            object.__setattr__(self, "_merged_cache", (key, merged))
        return self._merged_cache[1]

    def delta_weight(self, x: torch.Tensor) -> torch.Tensor:
        return (self.lora_up.to(device=x.device, dtype=x.dtype) @ self.lora_down.to(device=x.device, dtype=x.dtype)) * self.scale

    def _use_merged(self) -> bool:
        # In ComfyUI's low-VRAM mode the wrapped layer casts its weight and applies weight patches on
        # the fly; a merged copy would miss them, so that case stays on the run-time path.
        return self.merged and "weight" in self._parameters and not getattr(self._inner, "comfy_cast_weights", False)

    def _forward_merged(self, x: torch.Tensor, rows: torch.Tensor | None, selector: "RowSelector") -> torch.Tensor:
        bias = self._parameters.get("bias")
        bias = None if bias is None else bias.to(device=x.device, dtype=x.dtype)
        if rows is None:
            return F.linear(x, self._merged_weight(x), bias)
        if rows.numel() == 0:
            return self._inner(x)
        others = selector.complement(rows)
        first = self._inner(x.index_select(0, others))
        out = first.new_empty((x.shape[0], *first.shape[1:]))
        out.index_copy_(0, others, first)
        return out.index_copy_(0, rows, F.linear(x.index_select(0, rows), self._merged_weight(x), bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._refresh_shared()
        call = CURRENT_CALL.get()
        # called outside a wrapped UNet call: a plain batch
        selector = call.selector if call is not None else RowSelector(x.shape[0], 1, None, device=x.device)
        rows = selector.rows_for(self.branch)
        if self._use_merged():
            return self._forward_merged(x, rows, selector)
        out = self._inner(x)
        if rows is None:
            return out.add_(self.delta(x))
        if rows.numel() == 0:
            return out
        # `out` is the fresh output of the wrapped layer: adding in place saves a copy per layer
        return out.index_add_(0, rows, self.delta(x.index_select(0, rows)))

    def extra_repr(self) -> str:
        return f"branch={self.branch.value}, rank={self.lora_down.shape[0]}, scale={self.scale:g}, merged={self.merged}"
