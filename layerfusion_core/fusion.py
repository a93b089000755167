"""LayerFusion's settings and the state of one generation (plain Python and tensors, no ComfyUI).

`FusionSettings` is what `LayerFusion Apply` sets; `FusionRun` holds what one sampling run
learns (the structure prior, each block's last content map) and decides per UNet call whether
to extract the prior or blend; `MaskRecorder` keeps the last run's maps for `LayerFusion Masks`.
"""

from __future__ import annotations

import dataclasses
import enum

import torch

from .priors import BgMode, BlendSwitches

BlockKey = tuple[str, int, int]  # ("input" | "middle" | "output", block id, transformer index)


class PriorMode(str, enum.Enum):
    PRIOR_PASS = "prior_pass"  # the FG stream alone runs to the extraction step first (the paper's figure)
    IN_RUN = "in_run"  # extracted inside the joint run; no blending before it


class Phase(enum.Enum):
    PRIOR_PASS = "prior pass"
    JOINT = "joint run"


@dataclasses.dataclass(frozen=True)
class FusionSettings:
    d: float = 10.0
    prior_at: float = 0.8  # extract at the first step whose timestep is <= prior_at * T
    prior_mode: PriorMode = PriorMode.PRIOR_PASS
    blend_start: float = 0.0  # fractions of the schedule (ComfyUI percent: 0 = first step)
    blend_end: float = 1.0
    bg_mode: BgMode = BgMode.BG_FROM_BL
    switches: BlendSwitches = BlendSwitches()
    structure_block: BlockKey = ("output", 5, 1)  # the last self-attention block (SDXL)


class MaskRecorder:
    """The maps of the last run, for inspection: the structure prior and, per block and joint-run
    step, the soft mask of the cross-attention blend (FG cond rows, one map per layered set).
    Shared, not copied, when ComfyUI clones the model (it records; it changes no result)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.structure: torch.Tensor | None = None  # [N, h, w]
        self.soft: dict[tuple[BlockKey, int], torch.Tensor] = {}  # (block, step) -> [N, h, w]
        self.extractions = 0
        self.extraction_step: int | None = None
        self.extraction_phase: Phase | None = None
        self.prior_pass_calls = 0
        self.joint_calls = 0
        self.blended: set[tuple[str, BlockKey]] = set()  # (attn1 | attn2, block) where a blend ran

    def __deepcopy__(self, memo) -> "MaskRecorder":
        return self


@dataclasses.dataclass
class FusionRun:
    """One generation: created when sampling starts, dropped when it ends."""

    settings: FusionSettings
    eos_index: int
    sigma_extract: float
    sigma_blend_start: float
    sigma_blend_end: float
    recorder: MaskRecorder
    phase: Phase = Phase.JOINT
    prior: torch.Tensor | None = None  # s' [N, M] of the structure block
    prior_grid: tuple[int, int] | None = None
    last_content: dict[BlockKey, torch.Tensor] = dataclasses.field(default_factory=dict)
    step: int = -1  # index of the current UNet call in the current phase
    blend_calls: int = 0  # joint-run UNet calls that blended (each must reach every block)

    def begin_call(self, sigma: float) -> tuple[bool, bool]:
        """Start a UNet call at ``sigma``: returns (extract the prior in it, blend in it)."""
        self.step += 1
        if self.phase is Phase.PRIOR_PASS:
            self.recorder.prior_pass_calls += 1
        else:
            self.recorder.joint_calls += 1
        extract_phase = Phase.PRIOR_PASS if self.settings.prior_mode is PriorMode.PRIOR_PASS else Phase.JOINT
        extract = self.prior is None and self.phase is extract_phase and sigma <= self.sigma_extract
        blend = (
            self.phase is Phase.JOINT and self.prior is not None and self.settings.switches.any
            and self.sigma_blend_end <= sigma <= self.sigma_blend_start
        )
        return extract, blend

    def set_prior(self, prior: torch.Tensor, grid: tuple[int, int]) -> None:
        self.prior, self.prior_grid = prior, grid
        self.recorder.extractions += 1
        self.recorder.extraction_step = self.step
        self.recorder.extraction_phase = self.phase
        self.recorder.structure = prior.detach().view(prior.shape[0], *grid).float().cpu()

    def start_joint_run(self) -> None:
        self.phase = Phase.JOINT
        self.step = -1
        self.last_content.clear()
