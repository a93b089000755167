"""LayerFusion's attention patches: the priors read before the projections (`PriorProbe`) and the
blends after ``to_out`` (`BlendOutput`), in every transformer block, for the `FusionCall` in the
call's transformer_options (``CALL_OPTION``). They use no replace slot: attention itself runs as
ComfyUI (or another pack's replace patch) runs it, and no projected keys or values are kept alive
longer than ComfyUI keeps them.
"""

from __future__ import annotations

import dataclasses

import torch

from ..fusion import blending, priors
from ..fusion.run import FusionRun, Phase
from ..fusion.settings import BlockKey
from ..layout.rows import RowSelector, stream_view
from ..layout.streams import Stream
from .calls import CURRENT_ROWS, CallRows
from .model_info import attention_module
from .options import CALL_OPTION


@dataclasses.dataclass
class FusionCall:
    """What LayerFusion does in one UNet call of a run: its rows, whether it extracts the prior or
    blends, and the maps it computed on the way (dropped with the call)."""

    rows: CallRows
    run: FusionRun
    unet: torch.nn.Module | None  # the UNet running this call (to reach a block's projections)
    extract: bool = False
    blend: bool = False
    blend_next: bool = False  # a later call may blend: keep the content maps of this one
    content: dict[BlockKey, torch.Tensor] = dataclasses.field(default_factory=dict)
    structure: dict[tuple[int, int], torch.Tensor] = dataclasses.field(default_factory=dict)  # s' per token grid
    steering: dict[tuple[int, int], torch.Tensor] = dataclasses.field(default_factory=dict)  # placement weights per token grid


def block_key(extra_options: dict) -> BlockKey:
    block = extra_options["block"]
    return (block[0], int(block[1]), int(extra_options.get("block_index", 0)))


class PriorProbe:
    """attn1/attn2 patch (before the projections): reads the priors of the FG cond rows by projecting
    those rows alone with the block's own to_q and to_k (the FG LoRA included)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __call__(self, n, context, value, extra_options, *args, **kwargs):
        call: FusionCall | None = extra_options.get(CALL_OPTION)
        if call is None or call.rows.cond_chunk is None or call.unet is None:
            return n, context, value
        key = block_key(extra_options)
        if self.kind == "attn1":
            wanted = call.extract and key == call.run.settings.structure_block
        else:
            wanted = call.run.phase is Phase.JOINT and call.blend_next
        if wanted:
            self._read(call, key, n, n if context is None else context, extra_options)
        return n, context, value

    def _read(self, call: FusionCall, key: BlockKey, n, context, extra_options) -> None:
        selector = call.rows.selector
        fgs = selector.offsets(Stream.FG)  # the foreground rows of each set (all of them in the prior pass)
        n_fg, ctx_fg = (stream_view(t, selector)[call.rows.cond_chunk][:, fgs].flatten(0, 1) for t in (n, context))
        attention = attention_module(call.unet, key, self.kind)
        # the projections' branch LoRAs see these rows as fg rows
        token = CURRENT_ROWS.set(call.rows.only(RowSelector(n_fg.shape[0], 1, (Stream.FG,), n.device)))
        try:
            q, k = attention.to_q(n_fg), attention.to_k(ctx_fg)
        finally:
            CURRENT_ROWS.reset(token)
        heads = extra_options["n_heads"]
        if self.kind == "attn1":
            call.run.set_prior(priors.structure_prior(q, k, heads), tuple(extra_options["activations_shape"][-2:]))
        else:
            call.content[key] = call.run.last_content[key] = priors.content_confidence(q, k, heads, call.run.eos_rows(q.shape[0]))


class BlendOutput:
    """attn1/attn2 output patch: the attention-level blend of the three streams."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __call__(self, n: torch.Tensor, extra_options: dict, *args, **kwargs) -> torch.Tensor:
        call: FusionCall | None = extra_options.get(CALL_OPTION)
        if call is None:
            return n
        run, key = call.run, block_key(extra_options)
        grid = tuple(extra_options["activations_shape"][-2:])
        if self.kind == "attn2" and run.placement is not None and run.placement.steer:
            _steer(n, call, grid)
        if not call.blend:
            return n
        if grid not in call.structure:
            call.structure[grid] = priors.resize_map(run.prior, run.prior_grid, grid)
        content = call.content.get(key) if self.kind == "attn2" else run.last_content.get(key)
        soft, hard = blending.masks(call.structure[grid], content, run.settings.d, run.settings.norm_quantile)
        run.record_blend(self.kind, key, grid, soft if self.kind == "attn2" else None)
        layout = run.layout
        streams = stream_view(n, call.rows.selector)  # [chunks, sets, K + 2, M, D]: each chunk with the same masks
        softs, hards = (m.view(-1, layout.foregrounds, m.shape[-1]) for m in (soft, hard))  # [sets, K, M]
        fgs = layout.offsets(Stream.FG)
        (bg,), (bl,) = ([streams[:, :, i] for i in layout.offsets(s)] for s in (Stream.BG, Stream.BLEND))
        new_fgs, new_bg, new_bl = blending.blend_stack(
            [streams[:, :, i] for i in fgs], bg, bl, [softs[:, k] for k in range(len(fgs))], [hards[:, k] for k in range(len(fgs))],
            run.settings.bg_mode, run.settings.switches)
        for i, value in zip((*fgs, *layout.offsets(Stream.BG), *layout.offsets(Stream.BLEND)), (*new_fgs, new_bg, new_bl)):
            streams[:, :, i] = value  # n is to_out's fresh output
        return n


def _steer(n: torch.Tensor, call: FusionCall, grid: tuple[int, int]) -> None:
    """Each foreground's prompt weighted per token by its placement hint ``w``, in place: in every cond
    chunk its cross-attention output becomes ``uncond + w * (cond - uncond)``, so outside its hint the prompt
    does not guide that foreground (the uncond chunk is untouched: what the model draws without the prompt).
    A call without both (cfg 1, or cond and uncond run apart) weights the output itself (``w * out``, in
    cond and uncond calls alike, so their difference stays the prompt's), a cruder steer: the run says so once."""
    selector, foregrounds = call.rows.selector, len(call.run.eos)
    fgs = selector.offsets(Stream.FG)
    streams = stream_view(n, selector)  # [chunks, S, per_set, M, D]: S * len(fgs) = sets * K foreground rows
    if grid not in call.steering:  # once per token grid and call, not per block
        sets = streams.shape[1] * len(fgs) // foregrounds
        weights = call.run.placement.weights(grid, foregrounds, sets, n.device)
        call.steering[grid] = weights.view(streams.shape[1], len(fgs), -1, 1).to(n.dtype)
    weights = call.steering[grid]
    chunks = call.rows.cond_or_uncond
    conds = [i for i, kind in enumerate(chunks) if kind == 0]  # several when the positive has several entries
    if conds and 1 in chunks:
        uncond = streams[chunks.index(1), :, fgs]
        for cond in conds:
            streams[cond, :, fgs] = uncond + weights * (streams[cond, :, fgs] - uncond)
        return
    call.run.note_once("steer_without_uncond", "LayerFusion Placement's steer: a UNet call had cond or uncond rows alone "
                       "(cfg 1, or cond and uncond run apart), so the foregrounds' cross-attention is weighted by the hints "
                       "directly, a cruder steer that can cost the objects their prompted colours: set steer off if it does")
    streams[:, :, fgs] = streams[:, :, fgs] * weights
