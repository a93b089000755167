"""Priors, masks and blends against naive implementations written here from docs/method.md's equations."""

from __future__ import annotations

import itertools

import pytest
import torch

from layerfusion.layerfusion_core.fusion import blending, priors
from layerfusion.layerfusion_core.fusion.blending import BgMode, BlendSwitches
from support.naive import naive_attention_probs, naive_norm


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("chunk", [1 << 24, 7, 1])
def test_structure_prior_equals_the_naive_one_whatever_the_chunking(chunk):
    heads, m_tokens = 2, 12
    q, k = torch.randn(2, m_tokens, heads * 4, generator=gen(0)), torch.randn(2, m_tokens, heads * 4, generator=gen(1))
    got = priors.structure_prior(q, k, heads, max_elements=chunk)
    for img in range(2):
        m = naive_attention_probs(q[img], k[img], heads).mean(dim=0)  # average heads before squaring
        s = [1.0 / float((m[i] ** 2).sum()) for i in range(m_tokens)]
        expected = [1.0 - v for v in naive_norm(s)]
        assert torch.allclose(got[img].double(), torch.tensor(expected, dtype=torch.float64), atol=1e-5)


def test_content_confidence_is_the_eos_column_averaged_over_heads():
    heads, eos = 2, 3
    q, k = torch.randn(1, 10, 8, generator=gen(2)), torch.randn(1, 6, 8, generator=gen(3))
    got = priors.content_confidence(q, k, heads, eos)
    expected = naive_attention_probs(q[0], k[0], heads)[:, :, eos].mean(dim=0)
    assert torch.allclose(got[0].double(), expected, atol=1e-6)
    assert got.min() >= 0 and got.max() <= 1


def test_content_confidence_takes_each_images_own_eos_token():
    q, k = torch.randn(3, 6, 8, generator=gen(6)), torch.randn(3, 10, 8, generator=gen(7))
    eos = torch.tensor([2, 7, 4])  # each foreground's prompt has its own end token
    got = priors.content_confidence(q, k, 2, eos)
    for img in range(3):
        expected = naive_attention_probs(q[img], k[img], 2)[:, :, int(eos[img])].mean(dim=0)
        assert torch.allclose(got[img].double(), expected, atol=1e-6)
    assert torch.equal(priors.content_confidence(q, k, 2, torch.tensor([4, 4, 4])), priors.content_confidence(q, k, 2, 4))


def test_masks_follow_the_equations():
    s, c = torch.rand(1, 9, generator=gen(4)), torch.rand(1, 9, generator=gen(5))
    soft, hard = blending.masks(s, c, d=7.0)
    expected_soft = naive_norm([float(a * b) for a, b in zip(s[0], c[0])])
    assert torch.allclose(soft[0].double(), torch.tensor(expected_soft, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(hard, 1 / (1 + torch.exp(-7.0 * (soft - 0.5))), atol=1e-6)
    soft_only, _ = blending.masks(s, None, d=7.0)
    assert torch.allclose(soft_only, priors.minmax_norm(s))


def naive_quantile(values: list[float], q: float) -> float:
    """The q-quantile with linear interpolation between the two nearest ranks (torch's and numpy's default)."""
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    below = int(rank)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (rank - below) * (ordered[above] - ordered[below])


@pytest.mark.parametrize("q", [0.5, 0.8, 0.9, 0.97])
def test_quantile_norm_tops_out_at_the_quantile(q):
    x = torch.rand(2, 40, generator=gen(6))
    x[:, 3] = 25.0  # one bright outlier (a border token): min-max would put every other token near 0
    got = priors.quantile_norm(x, q)
    for img in range(2):
        values = [float(v) for v in x[img]]
        lo, hi = min(values), naive_quantile(values, q)
        expected = [min(1.0, max(0.0, (v - lo) / (hi - lo + priors.EPS))) for v in values]
        assert torch.allclose(got[img].double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6)
        assert float((got[img] >= 1.0 - 1e-6).float().mean()) >= 1.0 - q - 1 / 40  # the top share is all 1
    assert float(priors.minmax_norm(x)[0].median()) < 0.05  # what the outlier does to min-max


def test_quantile_norm_at_one_is_minmax_bit_for_bit():
    x = torch.rand(3, 17, generator=gen(7))
    assert torch.equal(priors.quantile_norm(x, 1.0), priors.minmax_norm(x))
    c = torch.rand(3, 17, generator=gen(8))
    assert all(torch.equal(a, b) for a, b in zip(blending.masks(x, c, 10.0, 1.0), blending.masks(x, c, 10.0)))
    soft, hard = blending.masks(x, c, 10.0, 0.9)
    assert torch.allclose(soft, priors.quantile_norm(x * c, 0.9))
    assert torch.allclose(hard, torch.sigmoid(10.0 * (soft - 0.5)))


def test_norm_of_a_constant_map_is_zero_not_nan():
    assert torch.equal(priors.minmax_norm(torch.full((1, 5), 3.0)), torch.zeros(1, 5))


def naive_blend(fg, bg, bl, soft, hard, mode, sw):
    """Token by token, exactly as docs/method.md writes it."""
    out_fg, out_bg, out_bl = fg.clone(), bg.clone(), bl.clone()
    for i in range(fg.shape[0]):
        s, h = float(soft[i]), float(hard[i])
        bl1 = fg[i] * s + bl[i] * (1 - s) if sw.blend else bl[i]
        out_fg[i] = bl1 * h + fg[i] * (1 - h) if sw.fg else fg[i]
        out_bl[i] = bl1
        if sw.bg and mode is BgMode.BG_FROM_BL:
            out_bg[i] = bg[i] * s + bl1 * (1 - s)
        if sw.bg and mode is BgMode.BL_FROM_BG:
            out_bl[i] = bl1 * s + bg[i] * (1 - s)
    return out_fg, out_bg, out_bl


@pytest.mark.parametrize("mode", list(BgMode))
@pytest.mark.parametrize("switches", [BlendSwitches(*bits) for bits in itertools.product([True, False], repeat=3)])
def test_blend_equals_the_naive_token_by_token_blend(mode, switches):
    fg, bg, bl = (torch.randn(1, 6, 4, generator=gen(i)) for i in (6, 7, 8))
    soft = torch.rand(1, 6, generator=gen(9))
    hard = torch.sigmoid(10 * (soft - 0.5))
    got = blending.blend(fg, bg, bl, soft, hard, mode, switches)
    expected = naive_blend(fg[0], bg[0], bl[0], soft[0], hard[0], mode, switches)
    for g, e in zip(got, expected):
        assert torch.allclose(g[0], e, atol=1e-6)
    if not switches.any:
        assert all(torch.equal(g, x) for g, x in zip(got, (fg, bg, bl)))


def test_resize_map():
    values = torch.arange(16.0).view(1, 16)
    assert torch.equal(priors.resize_map(values, (4, 4), (4, 4)), values)
    assert torch.allclose(priors.resize_map(values, (4, 4), (2, 2)), torch.tensor([[2.5, 4.5, 10.5, 12.5]]))
    assert priors.resize_map(values, (4, 4), (8, 8)).shape == (1, 64)


def test_structure_prior_never_allocates_a_heads_x_m_x_m_tensor():
    """The memory proxy of the benchmark's structure-prior target (no wall time): at 32x32 tokens and
    10 heads, no single allocation comes near heads x M x M floats."""
    from layerfusion_dev.alloc_tracker import AllocationTracker

    heads, m_tokens = 10, 1024
    q, k = torch.randn(1, m_tokens, heads * 8, generator=gen(10)), torch.randn(1, m_tokens, heads * 8, generator=gen(11))
    budget = 1 << 18
    with AllocationTracker() as tracker:
        priors.structure_prior(q, k, heads, max_elements=budget)
    full_matrix = heads * m_tokens * m_tokens * 4
    assert tracker.largest <= budget * 4 * 2  # one chunk of float32 probabilities (and its exp), never more
    assert tracker.peak < full_matrix / 4, (tracker.peak, full_matrix)
