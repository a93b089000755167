"""What the patches of one UNet call share: the call's rows (which stream and branch owns each)
and, in a LayerFusion run, what to do in it. `patching`'s DIFFUSION_MODEL wrapper hands it to the
call's transformer_options (the attention patches read it there) and sets `CURRENT_CALL`, on the
thread running that call and for its duration only, for the branch LoRA layers (which see no options)."""

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

    @property
    def cond_chunk(self) -> int | None:
        return self.cond_or_uncond.index(0) if 0 in self.cond_or_uncond else None


CURRENT_CALL: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("layerfusion_call", default=None)
