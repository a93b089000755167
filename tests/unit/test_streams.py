"""The three-stream layout and LATENT helpers, on plain tensors."""

from __future__ import annotations

import pytest
import torch

from layerfusion.layerfusion_core.layout import latents, streams
from layerfusion.layerfusion_core.layout.streams import Stream


def test_interleave_puts_stream_s_at_rows_congruent_to_s():
    fg, bg, blend = (torch.full((2, 1), float(v)) for v in (10, 20, 30))
    batch = streams.interleave(fg, bg, blend)
    assert batch.flatten().tolist() == [10, 20, 30, 10, 20, 30]
    for row in range(batch.shape[0]):
        expected = {Stream.FG: 10, Stream.BG: 20, Stream.BLEND: 30}[streams.stream_of_row(row)]
        assert batch[row].item() == expected


def test_split_inverts_interleave():
    gen = torch.Generator().manual_seed(0)
    fg, bg, blend = (torch.randn(4, 4, 3, 5, generator=gen) for _ in range(3))
    parts = streams.split(streams.interleave(fg, bg, blend))
    assert torch.equal(parts[Stream.FG], fg)
    assert torch.equal(parts[Stream.BG], bg)
    assert torch.equal(parts[Stream.BLEND], blend)


@pytest.mark.parametrize("rows", [0, 1, 2, 4, 5, 7])
def test_batches_that_are_not_whole_sets_are_refused(rows):
    with pytest.raises(ValueError, match="3 rows per layered set"):
        streams.set_count(rows)
    with pytest.raises(ValueError):
        streams.split(torch.zeros(rows, 4))


def test_interleave_refuses_mismatched_streams():
    with pytest.raises(ValueError, match="one shape"):
        streams.interleave(torch.zeros(1, 4), torch.zeros(2, 4), torch.zeros(1, 4))


def test_stream_rows():
    assert streams.stream_rows(9, Stream.BG).tolist() == [1, 4, 7]
    assert streams.set_count(9) == 3


def test_empty_layered_latent_shape_and_checks():
    latent = latents.empty_layered_latent(2, 1024, 896)
    assert latent["samples"].shape == (6, 4, 112, 128)
    assert not latent["samples"].any()
    with pytest.raises(ValueError, match="multiples of 8"):
        latents.empty_layered_latent(1, 1000, 1001)
    with pytest.raises(ValueError, match="at least 1"):
        latents.empty_layered_latent(0, 64, 64)


def test_split_layered_latent_slices_per_row_entries_and_keeps_the_rest():
    samples = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 4, 2, 2).contiguous()
    mask = torch.arange(6.0).view(6, 1, 1, 1)
    latent = {"samples": samples, "noise_mask": mask, "batch_index": [10, 11, 12, 13, 14, 15], "downscale_ratio_spacial": 8}
    parts = latents.split_layered_latent(latent)
    assert parts[Stream.FG]["samples"][:, 0, 0, 0].tolist() == [0, 3]
    assert parts[Stream.BLEND]["noise_mask"].flatten().tolist() == [2, 5]
    assert parts[Stream.BG]["batch_index"] == [11, 14]
    assert parts[Stream.BG]["downscale_ratio_spacial"] == 8
    parts[Stream.FG]["samples"].add_(100)  # the split owns its samples: the input stays as it was
    assert samples[0, 0, 0, 0].item() == 0


def test_split_layered_latent_keeps_a_broadcast_mask_whole():
    mask = torch.ones(1, 1, 8, 8)
    parts = latents.split_layered_latent({"samples": torch.zeros(3, 4, 1, 1), "noise_mask": mask})
    assert all(part["noise_mask"] is mask for part in parts.values())


def test_a_set_of_k_foregrounds_is_the_foregrounds_bottom_first_then_bg_then_blend():
    layout = streams.Layout(3)
    assert layout.roles == (Stream.FG, Stream.FG, Stream.FG, Stream.BG, Stream.BLEND) and layout.per_set == 5
    assert layout.rows(10, Stream.FG).tolist() == [0, 1, 2, 5, 6, 7]  # set by set
    assert layout.rows(10, Stream.BLEND).tolist() == [4, 9]
    gen = torch.Generator().manual_seed(0)
    fg, bg, blend = torch.randn(6, 2, generator=gen), torch.randn(2, 2, generator=gen), torch.randn(2, 2, generator=gen)
    batch = layout.interleave(fg, bg, blend)
    assert torch.equal(batch[[0, 1, 2, 5, 6, 7]], fg) and torch.equal(batch[[3, 8]], bg) and torch.equal(batch[[4, 9]], blend)
    parts = layout.split(batch)
    assert torch.equal(parts[Stream.FG], fg) and torch.equal(parts[Stream.BG], bg) and torch.equal(parts[Stream.BLEND], blend)
    with pytest.raises(ValueError, match="5 rows per layered set"):
        layout.sets(12)
    with pytest.raises(ValueError, match="1 to 4 foregrounds"):
        streams.Layout(0)


def test_one_foreground_is_the_three_stream_layout():
    assert streams.Layout(1).roles == tuple(Stream) and streams.STREAMS_PER_SET == 3
    assert streams.Layout(1).rows(9, Stream.BG).tolist() == streams.stream_rows(9, Stream.BG).tolist() == [1, 4, 7]


def test_layered_latent_with_two_foregrounds_splits_set_by_set():
    latent = latents.empty_layered_latent(2, 16, 16, layout=streams.Layout(2))
    assert latent["samples"].shape[0] == 8 and latents.is_layered(latent) and latents.layout_of(latent) == streams.Layout(2)
    latent["samples"] = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 4, 2, 2).contiguous()
    latent["batch_index"] = list(range(10, 18))
    parts = latents.split_layered_latent(latent)
    assert parts[Stream.FG]["samples"][:, 0, 0, 0].tolist() == [0, 1, 4, 5]
    assert parts[Stream.BG]["samples"][:, 0, 0, 0].tolist() == [2, 6] and parts[Stream.BLEND]["batch_index"] == [13, 17]
    assert latents.FOREGROUNDS_KEY not in parts[Stream.FG] and latents.LAYERED_KEY not in parts[Stream.FG]
    assert latents.stream_selection(latent, Stream.FG).tolist() == [0, 1, 4, 5]
    assert not latents.is_layered({**latent, "samples": torch.zeros(6, 4, 2, 2)})  # 3 rows per set no longer
