"""The user's own background on plain tensors: the band around the object, the held blend rows and the
layered latent with the photo, against naive per-cell re-implementations."""

from __future__ import annotations

import itertools

import pytest
import torch

from layerfusion.layerfusion_core.fusion import photo
from layerfusion.layerfusion_core.fusion.blending import masks
from layerfusion.layerfusion_core.layout import latents
from layerfusion.layerfusion_core.layout.streams import Layout


def naive_band(hard: torch.Tensor, dilate: int, feather: int) -> torch.Tensor:
    """Per cell: in the grown mask when a cell of the object (> 0.5) lies within ``dilate`` cells
    (chessboard); then ``min(1, k / feather)`` with ``k`` the chessboard distance to the nearest grown-out
    cell (cells beyond the picture's border count as grown in)."""
    n, h, w = hard.shape
    out = torch.zeros(n, h, w)
    for s in range(n):
        obj = [(y, x) for y, x in itertools.product(range(h), range(w)) if hard[s, y, x] > 0.5]
        grown = [[any(max(abs(y - oy), abs(x - ox)) <= dilate for oy, ox in obj) for x in range(w)] for y in range(h)]
        outside = [(y, x) for y, x in itertools.product(range(h), range(w)) if not grown[y][x]]
        for y, x in itertools.product(range(h), range(w)):
            if not grown[y][x]:
                continue
            k = min((max(abs(y - oy), abs(x - ox)) for oy, ox in outside), default=10**6)
            out[s, y, x] = 1.0 if feather <= 1 else min(1.0, k / feather)
    return out


@pytest.mark.parametrize("dilate,feather", [(0, 0), (1, 1), (2, 3), (0, 4), (3, 2)])
def test_band_equals_the_naive_grow_and_inward_ramp(dilate, feather):
    gen = torch.Generator().manual_seed(dilate * 10 + feather)
    hard = (torch.rand(2, 11, 13, generator=gen) > 0.93).float() * torch.rand(2, 11, 13, generator=gen).add(0.5)
    got = photo.band(hard, dilate, feather)
    assert torch.allclose(got, naive_band(hard, dilate, feather), atol=1e-6)


def test_band_is_exactly_zero_outside_the_grown_mask_and_one_deep_inside():
    hard = torch.zeros(1, 32, 32)
    hard[0, 14:18, 14:18] = 1.0
    got = photo.band(hard, dilate_cells=4, feather_cells=3)
    grown = torch.zeros(32, 32, dtype=torch.bool)
    grown[10:22, 10:22] = True
    assert (got[0][~grown] == 0).all() and (got[0][grown] > 0).all()
    assert (got[0, 12:20, 12:20] == 1).all() and torch.isclose(got[0, 10, 16], torch.tensor(1 / 3))


def test_hold_band_uses_the_hard_mask_of_the_structure_block_on_the_latent_grid():
    gen = torch.Generator().manual_seed(3)
    prior, content = torch.rand(2, 64, generator=gen), torch.rand(2, 64, generator=gen)
    hold = photo.PhotoHold(dilate_px=8, feather_px=0)
    got = photo.hold_band(prior, (8, 8), content, 10.0, 1.0, (16, 16), hold)
    _soft, hard = masks(prior, content, 10.0)
    hard16 = torch.nn.functional.interpolate(hard.view(2, 1, 8, 8), size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    assert torch.equal(got, naive_band(hard16, 1, 0))


def test_held_blend_rows_multiplies_only_the_blend_rows():
    mask = torch.rand(6, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    band_map = torch.rand(2, 5, 5, generator=torch.Generator().manual_seed(1))
    got = photo.held_blend_rows(mask, band_map)
    for row in range(6):
        expected = mask[row] * band_map[row // 3] if row % 3 == 2 else mask[row]
        assert torch.equal(got[row], expected)


def test_pixel_settings_become_whole_latent_cells():
    assert (photo.PhotoHold(dilate_px=64, feather_px=32).dilate_cells, photo.PhotoHold(feather_px=32).feather_cells) == (8, 4)
    assert photo.PhotoHold(dilate_px=1, feather_px=9).dilate_cells == 1 and photo.PhotoHold(feather_px=9).feather_cells == 2


@pytest.mark.parametrize("photos", [1, 2])
def test_with_photo_sets_the_background_and_blend_rows_and_the_inpainting_mask(photos):
    latent = latents.empty_layered_latent(2, 32, 24)
    latent["samples"].normal_(generator=torch.Generator().manual_seed(0))
    image = torch.randn(photos, 4, 3, 4, generator=torch.Generator().manual_seed(1))
    region = torch.zeros(1, 24, 32)
    region[:, :8, :16] = 1.0
    out = latents.with_photo(latent, image, region)
    assert out[latents.LAYERED_KEY] == 2 and torch.equal(latent["samples"][0::3], out["samples"][0::3])
    for s in range(2):
        assert torch.equal(out["samples"][3 * s + 1], image[s % photos]) and torch.equal(out["samples"][3 * s + 2], image[s % photos])
    mask = out["noise_mask"]
    assert mask.shape == (6, 1, 3, 4)
    assert (mask[0::3] == 1).all() and (mask[1::3] == 0).all()
    assert (mask[2::3, 0, :1, :2] == 1).all() and mask[2::3].sum() == 2 * 2
    assert "noise_mask" not in latent  # the input LATENT is not changed


def test_with_photo_and_held_rows_with_two_foregrounds_per_set():
    layout = Layout(2)
    latent = latents.empty_layered_latent(2, 32, 24, layout=layout)
    latent["samples"].normal_(generator=torch.Generator().manual_seed(0))
    image = torch.randn(1, 4, 3, 4, generator=torch.Generator().manual_seed(1))
    out = latents.with_photo(latent, image)
    roles = [r % 4 for r in range(8)]  # fg_1, fg_2, bg, blend
    for row, role in enumerate(roles):
        if role < 2:
            assert torch.equal(out["samples"][row], latent["samples"][row]) and (out["noise_mask"][row] == 1).all()
        else:
            assert torch.equal(out["samples"][row], image[0])
            assert (out["noise_mask"][row] == (0 if role == 2 else 1)).all()
    band_map = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(2))
    held = photo.held_blend_rows(out["noise_mask"], band_map, layout)
    for row, role in enumerate(roles):
        expected = out["noise_mask"][row] * band_map[row // 4] if role == 3 else out["noise_mask"][row]
        assert torch.equal(held[row], expected)


def test_the_band_of_several_foregrounds_is_around_all_of_them():
    prior = torch.zeros(4, 16)  # two sets of two foregrounds on a 4x4 grid, each object one token
    for row, token in enumerate([0, 15, 5, 5]):
        prior[row, token] = 1.0
    hold = photo.PhotoHold(dilate_px=0, feather_px=0)
    got = photo.hold_band(prior, (4, 4), None, 10.0, 1.0, (4, 4), hold, Layout(2))
    assert got.shape == (2, 4, 4)
    assert got[0].flatten().nonzero().flatten().tolist() == [0, 15] and got[1].flatten().nonzero().flatten().tolist() == [5]
    alone = [photo.hold_band(prior[r:r + 1], (4, 4), None, 10.0, 1.0, (4, 4), hold) for r in range(4)]
    assert torch.equal(got[0], torch.maximum(alone[0][0], alone[1][0]))
