"""The state of one LayerFusion generation, and what it leaves behind (plain Python and tensors).

`FusionRun` is the one owner of a generation's state: created when sampling starts, it decides per
UNet call whether to extract the prior or blend, holds what the run learns (the structure prior,
each block's last content map, the soft masks it used) and the counters that prove every patch ran.
When the run ends it writes a `MaskRecord` into the model's `RecordSlot`, which `LayerFusion Masks`
reads.
"""

from __future__ import annotations

import dataclasses
import enum
import logging

import torch

from ..layout.streams import Layout
from .placement import Placement
from .settings import BlockKey, FusionSettings, PriorMode

log = logging.getLogger(__name__)


class Phase(enum.Enum):
    PRIOR_PASS = "prior pass"
    JOINT = "joint run"


@dataclasses.dataclass(frozen=True)
class MaskRecord:
    """What one finished run leaves for inspection: the structure prior, the soft mask of every
    cross-attention blend (FG cond rows: one map per foreground of each layered set, set by set) per
    block and joint-run step, and the counters of the calls and blends that ran."""

    structure: torch.Tensor  # [N * K, h, w]
    soft: dict[tuple[BlockKey, int], torch.Tensor]  # (block, step) -> [N * K, h, w]
    extractions: int
    extraction_step: int | None
    extraction_phase: Phase | None
    prior_pass_calls: int
    joint_calls: int
    blend_calls: int
    blended: frozenset[tuple[str, BlockKey]]  # (attn1 | attn2, block) where a blend ran
    band: torch.Tensor | None = None  # [N, h, w]: the last band the composite was free in (LayerFusion Background)
    foregrounds: int = 1  # K, foregrounds per layered set


class RecordSlot:
    """Where the runs of one model leave their `MaskRecord`.

    Each clone of the model gets a new slot linked to the one it was cloned from (made by the
    patcher's ON_CLONE callback: ComfyUI versions copy a model's options differently, 0.3.75 deeply,
    current ones only their dicts and lists, so the slot itself is never copied). A run's record
    goes into the slot of the model that ran and of every model it was cloned from, never into a
    sibling clone's, so two clones sampled one after the other keep their own records (and the model
    LayerFusion Apply returned shows the last run of any model made from it)."""

    def __init__(self, parent: RecordSlot | None = None) -> None:
        self.parent = parent
        self.record: MaskRecord | None = None

    def __deepcopy__(self, memo) -> RecordSlot:
        return self  # never copied: a clone's own slot comes from the clone callback

    def child(self) -> RecordSlot:
        return RecordSlot(parent=self)

    def publish(self, record: MaskRecord) -> None:
        slot: RecordSlot | None = self
        while slot is not None:
            slot.record = record
            slot = slot.parent


@dataclasses.dataclass
class FusionRun:
    """One generation: created when sampling starts, dropped when it ends."""

    settings: FusionSettings
    eos: tuple[int, ...]  # each foreground prompt's EOS token index, z order (K = its length)
    sigma_extract: float
    sigma_blend_start: float
    sigma_blend_end: float
    phase: Phase = Phase.JOINT
    placement: Placement | None = None  # where each foreground should be (LayerFusion Placement), weighting its prior
    prior: torch.Tensor | None = None  # s' [N * K, M] of the structure block (the FG rows, set by set)
    prior_grid: tuple[int, int] | None = None
    last_content: dict[BlockKey, torch.Tensor] = dataclasses.field(default_factory=dict)
    step: int = -1  # index of the current UNet call in the current phase
    # what ran, checked after each phase (every patch must have run) and kept in the record
    calls: dict[Phase, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(Phase, 0))
    blend_calls: int = 0  # joint-run UNet calls that blended (each must reach every block)
    blended: set[tuple[str, BlockKey]] = dataclasses.field(default_factory=set)
    extractions: int = 0
    extraction_step: int | None = None
    extraction_phase: Phase | None = None
    soft: dict[tuple[BlockKey, int], torch.Tensor] = dataclasses.field(default_factory=dict)
    band: torch.Tensor | None = None  # the last band of the composite's hold (photo.hold_band)
    noted: set[str] = dataclasses.field(default_factory=set)  # warnings already given in this run

    def note_once(self, key: str, message: str) -> None:
        """Warn ``message`` the first time ``key`` comes up in this run."""
        if key not in self.noted:
            self.noted.add(key)
            log.warning(message)

    @property
    def layout(self) -> Layout:
        return Layout(len(self.eos))

    def eos_rows(self, rows: int) -> int | torch.Tensor:
        """The EOS token of each of ``rows`` foreground rows (set by set): one index for one foreground."""
        if len(self.eos) == 1:
            return self.eos[0]
        return torch.tensor(self.eos).repeat(rows // len(self.eos))

    def begin_call(self, sigma: float) -> tuple[bool, bool]:
        """Start a UNet call at ``sigma``: returns (extract the prior in it, blend in it)."""
        self.step += 1
        self.calls[self.phase] += 1
        extract_phase = Phase.PRIOR_PASS if self.settings.prior_mode is PriorMode.PRIOR_PASS else Phase.JOINT
        extract = self.prior is None and self.phase is extract_phase and sigma <= self.sigma_extract
        blend = (
            self.phase is Phase.JOINT and self.prior is not None and self.settings.switches.any
            and self.sigma_blend_end <= sigma <= self.sigma_blend_start
        )
        if blend:
            self.blend_calls += 1
        return extract, blend

    def blends_later(self, sigma: float) -> bool:
        """Whether a call at ``sigma`` or after it may blend (its content maps are then kept)."""
        return self.settings.switches.any and sigma >= self.sigma_blend_end

    def set_prior(self, prior: torch.Tensor, grid: tuple[int, int]) -> None:
        """The structure prior ``[N * K, M]`` on ``grid``, weighted by the placement hints if any."""
        if self.placement is not None:
            prior = self.placement.weigh(prior, grid, len(self.eos))
        self.prior, self.prior_grid = prior, grid
        self.extractions += 1
        self.extraction_step = self.step
        self.extraction_phase = self.phase

    def record_blend(self, kind: str, key: BlockKey, grid: tuple[int, int], soft: torch.Tensor | None) -> None:
        """A blend ran in ``kind`` (attn1 | attn2) of block ``key``; ``soft`` its mask when kept."""
        self.blended.add((kind, key))
        if soft is not None:
            self.soft[(key, self.step)] = soft.detach().view(-1, *grid).half()

    def start_joint_run(self) -> None:
        self.phase = Phase.JOINT
        self.step = -1
        self.last_content.clear()

    def record(self) -> MaskRecord | None:
        """The record of the run so far (None before the structure prior was taken)."""
        if self.prior is None:
            return None
        return MaskRecord(
            structure=self.prior.detach().view(self.prior.shape[0], *self.prior_grid).float().cpu(),
            soft=dict(self.soft), extractions=self.extractions, extraction_step=self.extraction_step,
            extraction_phase=self.extraction_phase, prior_pass_calls=self.calls[Phase.PRIOR_PASS],
            joint_calls=self.calls[Phase.JOINT], blend_calls=self.blend_calls, blended=frozenset(self.blended),
            band=None if self.band is None else self.band.detach().float().cpu(), foregrounds=len(self.eos),
        )
