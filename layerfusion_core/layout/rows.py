"""Which rows of a UNet call belong to which stream and LoRA branch (plain torch, no ComfyUI)."""

from __future__ import annotations

import enum

import torch

from .streams import Stream


class Branch(str, enum.Enum):
    FG = "fg"
    BG = "bg"
    BLEND = "blend"
    ALL = "all"

    @property
    def stream(self) -> Stream | None:
        return None if self is Branch.ALL else Stream[self.name]


class BatchLayoutError(ValueError):
    pass


class RowSelector:
    """The rows of one UNet call that each stream and branch owns.

    ``rows`` is the batch size of the call and ``chunks`` the number of cond/uncond chunks in it
    (row ``c * per_chunk + r`` is row ``r`` of chunk ``c``). ``streams`` lists the streams of a
    chunk's rows in their repeating order: a `Layout`'s roles for a LayerFusion batch (``(FG, BG,
    BLEND)`` with one foreground), ``(FG,)`` for the FG-only prior pass, None for a plain batch
    (where `fg` and `all` own every row).
    """

    def __init__(self, rows: int, chunks: int, streams: tuple[Stream, ...] | None, device: torch.device) -> None:
        self.rows, self.chunks, self.streams, self.device = rows, max(chunks, 1), streams, device
        self.per_chunk = rows // self.chunks
        self._cache: dict[object, torch.Tensor | None] = {}
        if streams is not None and (rows % self.chunks or self.per_chunk % len(streams)):
            raise BatchLayoutError(
                f"LayerFusion: the model runs the layered layout, but this latent batch has {rows // self.chunks} rows "
                f"(seen as {rows} rows in {self.chunks} cond/uncond chunks), not a whole number of sets of {len(streams)} rows "
                f"({', '.join(s.label for s in streams)}). Start the latent with LayerFusion Empty Latent (with as many "
                "foregrounds as LayerFusion Conditioning has prompts) and do not change its batch size."
            )

    def rows_for(self, branch: Branch) -> torch.Tensor | None:
        """Row indices ``[K]`` of ``branch`` (possibly none), or None for every row."""
        if branch not in self._cache:
            self._cache[branch] = self._branch_rows(branch)
        return self._cache[branch]

    def _branch_rows(self, branch: Branch) -> torch.Tensor | None:
        if branch is Branch.ALL or (self.streams is None and branch is Branch.FG):
            return None
        if self.streams is None:
            raise BatchLayoutError(
                f"LayerFusion LoRA Apply: branch '{branch.value}' needs a LayerFusion batch (LayerFusion Apply on "
                "this model, fed by LayerFusion Empty Latent); this model runs a plain batch. Use branch 'fg' or 'all'."
            )
        index = torch.arange(self.rows, device=self.device)
        offsets = self.offsets(branch.stream)
        if not offsets:
            return index[:0]
        period = len(self.streams)
        return index[torch.isin((index % self.per_chunk) % period, torch.tensor(offsets, device=self.device))]

    def offsets(self, stream: Stream) -> list[int]:
        """Where ``stream``'s rows sit in each set of this call."""
        return [i for i, role in enumerate(self.streams or ()) if role is stream]


def stream_view(t: torch.Tensor, selector: RowSelector) -> torch.Tensor:
    """``t [rows, ...]`` as ``[chunks, sets, rows per set, ...]`` (a view: rows are interleaved per chunk)."""
    return t.view(selector.chunks, -1, len(selector.streams), *t.shape[1:])
