"""The three-stream batch layout.

A LayerFusion batch interleaves N layered sets as ``[fg, bg, blend] * N``: row ``r`` belongs to
stream ``r % 3`` of set ``r // 3`` (the convention of the existing joint SD1.5 workflows). The
layout is kept here, in one place, and nowhere else spelled out.
"""

from __future__ import annotations

from enum import IntEnum

import torch


class Stream(IntEnum):
    """The streams of a layered set, by their offset inside the set."""

    FG = 0
    BG = 1
    BLEND = 2

    @property
    def label(self) -> str:
        return self.name.lower()


STREAMS_PER_SET: int = len(Stream)


def set_count(batch_size: int) -> int:
    """Number of layered sets in a batch of ``batch_size`` rows.

    Raises ValueError when the batch is not a whole number of sets.
    """
    if batch_size <= 0 or batch_size % STREAMS_PER_SET:
        raise ValueError(
            f"a LayerFusion batch holds {STREAMS_PER_SET} rows per layered set "
            f"({', '.join(s.label for s in Stream)}), but this one has {batch_size} rows"
        )
    return batch_size // STREAMS_PER_SET


def stream_rows(batch_size: int, stream: Stream) -> torch.Tensor:
    """Row indices of ``stream`` in an interleaved batch of ``batch_size`` rows: ``[N]`` long."""
    return torch.arange(int(stream), batch_size, STREAMS_PER_SET)


def stream_of_row(row: int) -> Stream:
    return Stream(row % STREAMS_PER_SET)


def interleave(fg: torch.Tensor, bg: torch.Tensor, blend: torch.Tensor) -> torch.Tensor:
    """Three ``[N, ...]`` tensors -> one ``[3N, ...]`` batch in the ``[fg, bg, blend] * N`` layout."""
    if not fg.shape == bg.shape == blend.shape:
        raise ValueError(
            f"the three streams must have one shape; got fg {tuple(fg.shape)}, "
            f"bg {tuple(bg.shape)}, blend {tuple(blend.shape)}"
        )
    by_stream = {Stream.FG: fg, Stream.BG: bg, Stream.BLEND: blend}
    return torch.stack([by_stream[s] for s in Stream], dim=1).flatten(0, 1)


def split(batch: torch.Tensor) -> dict[Stream, torch.Tensor]:
    """One ``[3N, ...]`` interleaved batch -> each stream's ``[N, ...]`` rows (views, not copies)."""
    set_count(batch.shape[0])
    return {s: batch[int(s) :: STREAMS_PER_SET] for s in Stream}
