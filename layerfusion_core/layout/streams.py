"""The layered batch layout.

A LayerFusion batch interleaves N layered sets. A set is K foreground rows in z order (the first at
the bottom), then the background, then the blend: ``[fg_1..fg_K, bg, blend] * N``. With one
foreground (K = 1, the method's three streams) row ``r`` belongs to stream ``r % 3`` of set
``r // 3`` (the convention of the existing joint SD1.5 workflows). The layout is kept here, in one
place (`Layout`), and nowhere else spelled out.
"""

from __future__ import annotations

import dataclasses
from enum import IntEnum

import torch


class Stream(IntEnum):
    """The streams of a layered set, by their offset inside a set of one foreground."""

    FG = 0
    BG = 1
    BLEND = 2

    @property
    def label(self) -> str:
        return self.name.lower()


MAX_FOREGROUNDS: int = 4


@dataclasses.dataclass(frozen=True)
class Layout:
    """The rows of a layered set: ``foregrounds`` (K) foreground rows, then bg, then blend.

    Rows of one stream across a batch come set by set (``rows``): the foregrounds of set n are
    ``n * K .. n * K + K - 1`` of them, bottom first."""

    foregrounds: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.foregrounds <= MAX_FOREGROUNDS:
            raise ValueError(f"a layered set holds 1 to {MAX_FOREGROUNDS} foregrounds, not {self.foregrounds}")

    @property
    def per_set(self) -> int:
        return self.foregrounds + 2

    @property
    def roles(self) -> tuple[Stream, ...]:
        """The stream of each row of a set, in order."""
        return (Stream.FG,) * self.foregrounds + (Stream.BG, Stream.BLEND)

    def offsets(self, stream: Stream) -> tuple[int, ...]:
        """Where ``stream``'s rows sit inside a set."""
        return tuple(i for i, role in enumerate(self.roles) if role is stream)

    def describe(self) -> str:
        fgs = "fg" if self.foregrounds == 1 else f"fg_1..fg_{self.foregrounds}"
        return f"{self.per_set} rows per layered set ({fgs}, bg, blend)"

    def sets(self, batch_size: int) -> int:
        """Number of layered sets in a batch of ``batch_size`` rows; ValueError when not whole sets."""
        if batch_size <= 0 or batch_size % self.per_set:
            raise ValueError(f"a LayerFusion batch holds {self.describe()}, but this one has {batch_size} rows")
        return batch_size // self.per_set

    def rows(self, batch_size: int, stream: Stream) -> torch.Tensor:
        """Row indices of ``stream`` in a batch of ``batch_size`` rows, set by set: ``[N * rows of it per set]``."""
        index = torch.arange(batch_size)
        return index[torch.isin(index % self.per_set, torch.tensor(self.offsets(stream)))]

    def split(self, batch: torch.Tensor) -> dict[Stream, torch.Tensor]:
        """One ``[N * per_set, ...]`` batch -> each stream's rows (``[N * K, ...]`` for FG, set by set)."""
        sets = self.sets(batch.shape[0])
        view = batch.view(sets, self.per_set, *batch.shape[1:])
        return {s: view[:, list(self.offsets(s))].flatten(0, 1) for s in Stream}

    def interleave(self, fg: torch.Tensor, bg: torch.Tensor, blend: torch.Tensor) -> torch.Tensor:
        """``fg [N * K, ...]`` (set by set), ``bg`` and ``blend`` ``[N, ...]`` -> one ``[N * per_set, ...]`` batch."""
        k = self.foregrounds
        if not (bg.shape == blend.shape and fg.shape[1:] == bg.shape[1:] and fg.shape[0] == k * bg.shape[0]):
            raise ValueError(
                f"the streams must have one shape, with {k} foreground row(s) per background row; got fg {tuple(fg.shape)}, "
                f"bg {tuple(bg.shape)}, blend {tuple(blend.shape)}"
            )
        fgs = fg.view(bg.shape[0], k, *fg.shape[1:])
        return torch.cat([fgs, bg[:, None], blend[:, None]], dim=1).flatten(0, 1)


THREE_STREAMS = Layout(1)
STREAMS_PER_SET: int = THREE_STREAMS.per_set


def set_count(batch_size: int) -> int:
    """Number of layered sets in a batch of ``batch_size`` rows of one foreground each."""
    return THREE_STREAMS.sets(batch_size)


def stream_rows(batch_size: int, stream: Stream) -> torch.Tensor:
    """Row indices of ``stream`` in a ``[fg, bg, blend] * N`` batch: ``[N]`` long."""
    return THREE_STREAMS.rows(batch_size, stream)


def stream_of_row(row: int) -> Stream:
    return THREE_STREAMS.roles[row % STREAMS_PER_SET]


def interleave(fg: torch.Tensor, bg: torch.Tensor, blend: torch.Tensor) -> torch.Tensor:
    """Three ``[N, ...]`` tensors -> one ``[3N, ...]`` batch in the ``[fg, bg, blend] * N`` layout."""
    return THREE_STREAMS.interleave(fg, bg, blend)


def split(batch: torch.Tensor) -> dict[Stream, torch.Tensor]:
    """One ``[3N, ...]`` interleaved batch -> each stream's ``[N, ...]`` rows."""
    return THREE_STREAMS.split(batch)
