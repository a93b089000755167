"""The blend with K foregrounds (issue 26's equations) on plain tensors: against a naive per-token
re-implementation for K = 3, and K = 1 against the three-stream blend of docs/method.md written out."""

from __future__ import annotations

import itertools

import pytest
import torch

from layerfusion.layerfusion_core.fusion.blending import BgMode, BlendSwitches, blend_stack, union
from support.naive import naive_stack

SWITCHES = [BlendSwitches(*flags) for flags in itertools.product([True, False], repeat=3)]


def inputs(k_count: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    a_fgs = [torch.randn(2, 5, 3, generator=gen, dtype=torch.float64) for _ in range(k_count)]
    a_bg, a_bl = (torch.randn(2, 5, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    softs = [torch.rand(2, 5, generator=gen, dtype=torch.float64) for _ in range(k_count)]
    hards = [torch.sigmoid(10 * (s - 0.5)) for s in softs]
    return a_fgs, a_bg, a_bl, softs, hards


@pytest.mark.parametrize("mode", list(BgMode))
@pytest.mark.parametrize("switches", SWITCHES, ids=str)
def test_three_foregrounds_equal_the_naive_token_by_token_blend(mode, switches):
    args = inputs(3)
    fgs, bg, bl = blend_stack(*args, mode, switches)
    want_fgs, want_bg, want_bl = naive_stack(*args, mode, switches)
    for got, want in zip([*fgs, bg, bl], [*want_fgs, want_bg, want_bl]):
        assert torch.allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("mode", list(BgMode))
def test_one_foreground_is_the_three_stream_blend_of_the_method(mode):
    """docs/method.md's equations, each written out once more: the K = 1 stack is exactly them."""
    (a_fg,), a_bg, a_bl, (soft,), (hard,) = inputs(1, seed=3)
    (fg,), bg, bl = blend_stack([a_fg], a_bg, a_bl, [soft], [hard], mode)
    s, h = soft[..., None], hard[..., None]
    new_bl = a_fg * s + a_bl * (1 - s)
    assert torch.allclose(fg, new_bl * h + a_fg * (1 - h), atol=1e-12)
    if mode is BgMode.BG_FROM_BL:
        assert torch.allclose(bg, a_bg * s + new_bl * (1 - s), atol=1e-12) and torch.allclose(bl, new_bl, atol=1e-12)
    else:
        assert torch.equal(bg, a_bg) and torch.allclose(bl, new_bl * s + a_bg * (1 - s), atol=1e-12)


def test_union_of_one_mask_is_that_mask_and_of_several_where_any_is():
    softs = [torch.rand(4, 6, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    assert union(softs[:1]) is softs[0]
    assert torch.allclose(union(softs), 1 - (1 - softs[0]) * (1 - softs[1]) * (1 - softs[2]), atol=1e-6)


def test_mismatched_lists_are_refused():
    a_fgs, a_bg, a_bl, softs, hards = inputs(2)
    with pytest.raises(ValueError, match="2 foregrounds, 1 soft and 2 hard masks"):
        blend_stack(a_fgs, a_bg, a_bl, softs[:1], hards)
