"""What the patches of one UNet call share: the call's rows (which stream and branch owns each)
and, in a LayerFusion run, what to do in it. `patching`'s DIFFUSION_MODEL wrapper hands it to the
call's transformer_options (the attention patches read it there) and sets `CURRENT_CALL`, on the
thread running that call and for its duration only, for the branch LoRA hooks (which see no options).

Also here: `HookPointError`, raised wherever a patch the pack registered with ComfyUI did not run."""

from __future__ import annotations

import contextvars
import dataclasses

import torch

from .fusion import BlockKey, FusionRun
from .rows import RowSelector


@dataclasses.dataclass
class CallContext:
    """What the patches of one UNet call need: its rows and, in a LayerFusion run, what to do."""

    selector: RowSelector
    cond_or_uncond: list[int]
    run: FusionRun | None = None
    extract: bool = False
    blend: bool = False
    blend_next: bool = False  # a later call may blend: keep the content maps of this one
    content: dict[BlockKey, torch.Tensor] = dataclasses.field(default_factory=dict)
    structure: dict[tuple[int, int], torch.Tensor] = dataclasses.field(default_factory=dict)  # s' per token grid
    unet: torch.nn.Module | None = None  # the UNet running this call (to reach a block's projections)
    lora_hits: dict[str, set[int]] = dataclasses.field(default_factory=dict)  # branch LoRA key -> its layers that ran

    @property
    def cond_chunk(self) -> int | None:
        return self.cond_or_uncond.index(0) if 0 in self.cond_or_uncond else None


CURRENT_CALL: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("layerfusion_call", default=None)


class HookPointError(RuntimeError):
    """A patch the pack registered with ComfyUI did not run: never a silent no-op."""


def host_version() -> str:
    """The running ComfyUI's version (for errors about its hook points)."""
    try:
        import comfyui_version

        return str(comfyui_version.__version__)
    except Exception:  # noqa: BLE001 - any host without the module
        return "unknown"


def hook_point_error(node: str, what: str) -> HookPointError:
    return HookPointError(f"{node}: {what} on ComfyUI {host_version()}. Please report this with your ComfyUI version.")
