"""The rows of each UNet call: which stream and LoRA branch owns which row of the batch.

A DIFFUSION_MODEL wrapper (`on_unet_call`) decides the rows once per UNet call, from the batch
size, ``cond_or_uncond`` and whether the model runs the LayerFusion layout (``LAYOUT_OPTION``, set
by `enable_layered_batch`), and sets them in `CURRENT_ROWS` for the branch-LoRA hooks (which see no
options) on the thread that runs the call, for that call only: nothing survives the call, and no
state lives on nodes or in globals. After the call every branch LoRA must have reached every one of
its layers (`HookPointError` otherwise). In a LayerFusion sampling run the run's own handler
(``RUN_OPTION``) takes the call instead and runs it through `run_call` with rows of its choosing.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Callable
from typing import Any

import comfy.model_patcher
import comfy.patcher_extension
import torch

from ..layout.rows import RowSelector
from ..layout.streams import Layout
from .hook_points import hook_point_error
from .options import BRANCH_LORA_OPTION, LAYOUT_OPTION, ROWS_WRAPPER_KEY, RUN_OPTION, set_transformer_option


@dataclasses.dataclass
class CallRows:
    """The rows of one UNet call, and which branch LoRA layers ran in it."""

    selector: RowSelector
    cond_or_uncond: list[int]
    lora_hits: dict[str, set[int]] = dataclasses.field(default_factory=dict)  # branch LoRA key -> its layers that ran

    @property
    def cond_chunk(self) -> int | None:
        return self.cond_or_uncond.index(0) if 0 in self.cond_or_uncond else None

    def only(self, selector: RowSelector) -> CallRows:
        """The same call seen through ``selector`` (hits still count for this call)."""
        return dataclasses.replace(self, selector=selector)


CURRENT_ROWS: contextvars.ContextVar[CallRows | None] = contextvars.ContextVar("layerfusion_rows", default=None)

UnetArgs = tuple  # (x, timesteps, context, y, control)
CallHandler = Callable[[Any, UnetArgs, dict, dict], torch.Tensor]  # (executor, args, transformer_options, kwargs)


def call_rows(x: torch.Tensor, transformer_options: dict, layout: Layout | None) -> CallRows:
    """The rows of a UNet call on ``x``: ``layout``'s sets, or a plain batch for None."""
    cond_or_uncond = list(transformer_options.get("cond_or_uncond", [0]))
    streams = None if layout is None else layout.roles
    return CallRows(RowSelector(x.shape[0], len(cond_or_uncond), streams, x.device), cond_or_uncond)


def take_rows(value, rows: torch.Tensor, batch: int):
    """``value`` with only ``rows`` of every tensor whose first axis is the batch (nested lists/dicts too)."""
    if isinstance(value, torch.Tensor):
        return value[rows] if value.ndim and value.shape[0] == batch else value
    if isinstance(value, dict):
        return {k: take_rows(v, rows, batch) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(take_rows(v, rows, batch) for v in value)
    return value


def on_unet_call(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
    """DIFFUSION_MODEL wrapper: the call's rows for branch LoRAs; a LayerFusion run's handler takes
    the call when there is one."""
    args = (x, timesteps, context, y, control)
    handler: CallHandler | None = transformer_options.get(RUN_OPTION)
    if handler is not None:
        return handler(executor, args, transformer_options, kwargs)
    # outside a LayerFusion run (whose handler knows its own layout) a layered batch has one foreground per set
    rows = call_rows(x, transformer_options, Layout() if transformer_options.get(LAYOUT_OPTION) else None)
    return run_call(executor, rows, args, transformer_options, kwargs)


def run_call(executor, rows: CallRows, args: UnetArgs, transformer_options: dict, kwargs: dict):
    """One UNet call with ``rows`` in `CURRENT_ROWS`; then every branch LoRA of the model must have
    reached all of its layers."""
    token = CURRENT_ROWS.set(rows)
    try:
        out = executor(*args, transformer_options, **kwargs)
    finally:
        CURRENT_ROWS.reset(token)
    for key, lora in transformer_options.get(BRANCH_LORA_OPTION, {}).items():
        reached = len(rows.lora_hits.get(key, ()))
        if reached != len(lora.layers):
            raise hook_point_error(
                "LayerFusion LoRA Apply", f"{lora.file_name} on branch {lora.branch.value} reached {reached} of its "
                f"{len(lora.layers)} layers in a UNet call: ComfyUI did not apply the pack's model injection (forward hooks)"
            )
    return out


def ensure_rows_wrapper(model: comfy.model_patcher.ModelPatcher) -> None:
    kind = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
    if not model.get_wrappers(kind, ROWS_WRAPPER_KEY):
        model.add_wrapper_with_key(kind, ROWS_WRAPPER_KEY, on_unet_call)


def enable_layered_batch(model: comfy.model_patcher.ModelPatcher) -> comfy.model_patcher.ModelPatcher:
    """A clone of ``model`` that treats its batches as the LayerFusion layout ([fg, bg, blend] * N)."""
    patched = model.clone()
    set_transformer_option(patched, LAYOUT_OPTION, True)
    ensure_rows_wrapper(patched)
    return patched
