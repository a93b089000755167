"""Property-based fuzzing of priors, masks and blends (issue 9): shapes, ranges, finiteness, degenerate inputs.

Every expected value is computed here, in float64, from docs/method.md's equations (never by calling the function
under test again). Tolerances are the rounding error of the function's own dtype, amplified where the maths
amplifies it (a min-max normalisation divides by the map's range plus ``EPS``).

Cheap and deterministic by design: the ``layerfusion-fuzz`` profile is derandomised, has no deadline and no
example database; ``LAYERFUSION_FUZZ_EXAMPLES`` raises the example count for a deeper local run.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from layerfusion.layerfusion_core.fusion import blending, priors
from layerfusion.layerfusion_core.fusion.blending import BgMode, BlendSwitches

settings.register_profile(
    "layerfusion-fuzz",
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=False,
    max_examples=int(os.environ.get("LAYERFUSION_FUZZ_EXAMPLES", "50")),
)
FUZZ = settings.get_profile("layerfusion-fuzz")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ALL_SWITCHES = [BlendSwitches(*bits) for bits in itertools.product([True, False], repeat=3)]
ONE_HOT_LOGIT = 1e3  # a query-key product this large makes every other key's probability exactly 0 in float32


def unit(dtype: torch.dtype) -> float:
    """The unit roundoff of ``dtype``."""
    return torch.finfo(dtype).eps / 2


def smallest_subnormal(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).tiny * torch.finfo(dtype).eps


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------------
# Naive float64 references, from docs/method.md's equations


def naive_norm(values: torch.Tensor) -> torch.Tensor:
    """Min-max over the last axis with EPS in the denominator, in float64."""
    x = values.double()
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    return (x - lo) / (hi - lo + priors.EPS)


def norm_tolerance(exact: torch.Tensor, op_unit: float, input_error: float = 0.0, tiny: float = 0.0) -> torch.Tensor:
    """Worst-case distance of a computed min-max normalisation from ``naive_norm(exact)`` ``[S, N]``.

    ``op_unit``: rounding of the normalisation's own few operations (result in [0, 1]); ``input_error``: relative
    error of the values fed to it (``* max|v|``); ``tiny``: absolute rounding of subnormal differences. The last
    two are divided by the denominator ``range + EPS``."""
    x = exact.double()
    den = x.amax(-1, keepdim=True) - x.amin(-1, keepdim=True) + priors.EPS
    return 4 * op_unit + (4 * input_error * x.abs().amax(-1, keepdim=True) + tiny) / den


def naive_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """Softmax attention probabilities per head, ``[S, heads, M, T]`` in float64."""
    s, m, hd = q.shape
    t, d = k.shape[1], hd // heads
    qh = q.double().reshape(s, m, heads, d).permute(0, 2, 1, 3)
    kh = k.double().reshape(s, t, heads, d).permute(0, 2, 1, 3)
    logits = torch.einsum("shmd,shtd->shmt", qh, kh) / math.sqrt(d)
    weights = torch.exp(logits - logits.amax(-1, keepdim=True))
    return weights / weights.sum(-1, keepdim=True)


def max_logit(q: torch.Tensor, k: torch.Tensor, heads: int) -> float:
    d = q.shape[-1] // heads
    return float(q.double().abs().amax() * k.double().abs().amax() * d / math.sqrt(d)) if q.numel() else 0.0


def naive_blend(
    fg: torch.Tensor, bg: torch.Tensor, bl: torch.Tensor, soft: torch.Tensor, hard: torch.Tensor,
    mode: BgMode, sw: BlendSwitches,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """docs/method.md's three exchanges written out as products, in float64."""
    fg, bg, bl = fg.double(), bg.double(), bl.double()
    s, h = soft.double().unsqueeze(-1), hard.double().unsqueeze(-1)
    bl1 = fg * s + bl * (1 - s) if sw.blend else bl
    fg1 = bl1 * h + fg * (1 - h) if sw.fg else fg
    bg1, bl2 = bg, bl1
    if sw.bg and mode is BgMode.BG_FROM_BL:
        bg1 = bg * s + bl1 * (1 - s)
    if sw.bg and mode is BgMode.BL_FROM_BG:
        bl2 = bl1 * s + bg * (1 - s)
    return fg1, bg1, bl2


def axis_weights(n_in: int, n_out: int, shrink: bool) -> torch.Tensor:
    """``[n_out, n_in]`` resampling weights of one axis: adaptive average (area) or bilinear, half-pixel centres."""
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        if shrink:
            start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
            w[i, start:end] = 1.0 / (end - start)
        else:
            src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
            lo = min(int(math.floor(src)), n_in - 1)
            hi, frac = min(lo + 1, n_in - 1), src - lo
            w[i, lo] += 1 - frac
            w[i, hi] += frac
    return w


def assert_unit_interval(x: torch.Tensor) -> None:
    assert torch.isfinite(x).all(), x
    assert bool((x >= 0).all() and (x <= 1).all()), (x.min(), x.max())


# ---------------------------------------------------------------------------------------------------------------
# Attention inputs, including the degenerate ones

ATTENTION_KINDS = ("random", "zero_queries", "same_keys", "q_is_k", "one_hot")


@dataclass(frozen=True)
class Attention:
    q: torch.Tensor  # [S, M, heads * dim]
    k: torch.Tensor  # [S, T, heads * dim]
    heads: int
    kind: str
    target: int  # the key every row attends to, for "one_hot"


def build_attention(
    kind: str, images: int, m_tokens: int, t_tokens: int, heads: int, dim: int, scale: float, seed: int,
    dtype: torch.dtype, transposed: bool,
) -> Attention:
    g, hd = gen(seed), heads * dim
    q = torch.randn(images, m_tokens, hd, generator=g, dtype=torch.float64) * scale
    k = torch.randn(images, t_tokens, hd, generator=g, dtype=torch.float64) * scale
    target = seed % t_tokens
    if kind == "zero_queries":  # every logit 0: flat rows
        q = torch.zeros_like(q)
    elif kind == "same_keys":  # one key repeated: flat rows whatever the queries
        k = k[:, :1].expand_as(k)
    elif kind == "q_is_k":
        k = q
    elif kind == "one_hot":  # each head: unit query, one key along it, the others orthogonal
        q = torch.zeros_like(q).view(images, m_tokens, heads, dim)
        q[..., 0] = math.sqrt(dim) * ONE_HOT_LOGIT
        q = q.view(images, m_tokens, hd)
        k = k.view(images, t_tokens, heads, dim).clone()
        k[..., 0] = 0.0
        k[:, target, :, 0] = 1.0
        k = k.view(images, t_tokens, hd)
    q, k = q.to(dtype), k.to(dtype)
    if transposed:  # the same values in token-major storage ([M, S, C] memory), as a strided view
        q, k = q.transpose(0, 1).contiguous().transpose(0, 1), k.transpose(0, 1).contiguous().transpose(0, 1)
    return Attention(q, k, heads, kind, target)


@st.composite
def attentions(draw: st.DrawFn, self_attention: bool) -> Attention:
    m_tokens = draw(st.integers(1, 24))
    t_tokens = m_tokens if self_attention else draw(st.integers(1, 12))
    kinds = ATTENTION_KINDS if self_attention else tuple(k for k in ATTENTION_KINDS if k != "q_is_k")
    return build_attention(
        kind=draw(st.sampled_from(kinds)), images=draw(st.integers(1, 2)), m_tokens=m_tokens, t_tokens=t_tokens,
        heads=draw(st.integers(1, 3)), dim=draw(st.integers(1, 6)),
        scale=draw(st.sampled_from([1e-3, 0.3, 1.0, 3.0, 20.0])), seed=draw(st.integers(0, 2**31 - 1)),
        dtype=draw(st.sampled_from(DTYPES)), transposed=draw(st.booleans()),
    )


# ---------------------------------------------------------------------------------------------------------------
# structure_prior


@FUZZ
@given(att=attentions(self_attention=True), chunk=st.one_of(st.just(priors.PRIOR_CHUNK_ELEMENTS), st.integers(0, 80)))
@example(att=build_attention("random", 1, 1, 1, 1, 1, 1.0, 0, torch.float32, False), chunk=1)  # one token, one head
@example(att=build_attention("zero_queries", 2, 16, 16, 3, 4, 1.0, 1, torch.bfloat16, False), chunk=5)
@example(att=build_attention("one_hot", 1, 9, 9, 2, 3, 1.0, 7, torch.float16, True), chunk=1)
def test_structure_prior_fuzz(att: Attention, chunk: int) -> None:
    images, m_tokens = att.q.shape[:2]
    got = priors.structure_prior(att.q, att.k, att.heads, max_elements=chunk)
    assert got.shape == (images, m_tokens) and got.dtype == torch.float32
    assert_unit_interval(got)
    assert torch.equal(got.amax(-1), torch.ones(images))  # the flattest row always gets s' = 1

    if att.kind in ("zero_queries", "same_keys", "one_hot"):
        # every row is the same distribution (flat, or one-hot on one key): s is constant, so s' = 1 - 0 = 1
        assert torch.equal(got, torch.ones(images, m_tokens))
        return
    m = naive_probs(att.q, att.k, att.heads).mean(dim=1)  # average heads before squaring
    s = 1.0 / m.square().sum(-1)
    expected = 1.0 - naive_norm(s)
    error = unit(torch.float32) * (m_tokens + 10 + 2 * max_logit(att.q, att.k, att.heads))
    tol = norm_tolerance(s, unit(torch.float32), error)
    assert bool(((got.double() - expected).abs() <= tol).all()), (got, expected, tol)


def test_structure_prior_of_nearly_flat_rows_is_not_rounding_noise() -> None:
    heads, m_tokens, dim = 1, 256, 16
    q = torch.randn(1, m_tokens, dim, generator=gen(12)) * 1e-3
    k = torch.randn(1, m_tokens, dim, generator=gen(13)) * 1e-3
    m = naive_probs(q, k, heads).mean(dim=1)
    expected = 1.0 - naive_norm(1.0 / m.square().sum(-1))  # within 1e-3 of 1: the exact s varies by ~1e-9
    got = priors.structure_prior(q, k, heads)
    assert float((got.double() - expected).abs().max()) < 0.01


# ---------------------------------------------------------------------------------------------------------------
# content_confidence


@FUZZ
@given(att=attentions(self_attention=False), eos=st.integers(0, 11))
@example(att=build_attention("one_hot", 2, 5, 1, 1, 1, 1.0, 0, torch.float32, False), eos=0)  # a single text token
@example(att=build_attention("zero_queries", 1, 7, 77, 2, 4, 1.0, 3, torch.float16, False), eos=5)
def test_content_confidence_fuzz(att: Attention, eos: int) -> None:
    images, m_tokens = att.q.shape[:2]
    t_tokens = att.k.shape[1]
    eos %= t_tokens
    got = priors.content_confidence(att.q, att.k, att.heads, eos)
    assert got.shape == (images, m_tokens) and got.dtype == torch.float32
    assert_unit_interval(got)

    if att.kind in ("zero_queries", "same_keys"):
        expected = torch.full((images, m_tokens), 1.0 / t_tokens, dtype=torch.float64)
    elif att.kind == "one_hot":
        expected = torch.full((images, m_tokens), float(eos == att.target), dtype=torch.float64)
    else:
        expected = naive_probs(att.q, att.k, att.heads)[..., eos].mean(dim=1)
    tol = 1e-6 + unit(torch.float32) * (10 + 2 * max_logit(att.q, att.k, att.heads))
    assert bool(((got.double() - expected).abs() <= tol).all()), (got, expected, tol)
    if att.kind == "one_hot":
        assert torch.equal(got, expected.float())  # exactly 1 on the target key, exactly 0 elsewhere


# ---------------------------------------------------------------------------------------------------------------
# minmax_norm


@st.composite
def maps(draw: st.DrawFn, dtype: torch.dtype, bound: float) -> torch.Tensor:
    """``[S, N]`` maps of exactly representable values: hand-picked lists, constants, all zeros, one-hot."""
    images, n = draw(st.integers(1, 3)), draw(st.integers(1, 20))
    width = {torch.float32: 32, torch.float16: 16, torch.bfloat16: 32}[dtype]
    element = st.floats(-bound, bound, width=width, allow_nan=False, allow_infinity=False)
    kind = draw(st.sampled_from(["values", "constant", "zeros", "one_hot"]))
    if kind == "values":
        x = torch.tensor(draw(st.lists(element, min_size=images * n, max_size=images * n)), dtype=torch.float64)
    elif kind == "constant":
        x = torch.full((images * n,), draw(element), dtype=torch.float64)
    else:
        x = torch.zeros(images * n, dtype=torch.float64)
        if kind == "one_hot":
            x[draw(st.integers(0, images * n - 1))] = draw(element)
    return x.view(images, n).to(dtype)


def check_minmax_norm(x: torch.Tensor) -> None:
    got = priors.minmax_norm(x)
    assert got.shape == x.shape and got.dtype == x.dtype
    assert_unit_interval(got)
    assert bool((got.amin(-1) == 0).all())  # the minimum of each map maps to exactly 0
    constant = x.amin(-1) == x.amax(-1)
    assert bool((got[constant] == 0).all())  # a constant map is all zeros (documented), never NaN
    tol = norm_tolerance(x, unit(x.dtype), tiny=smallest_subnormal(x.dtype))
    assert bool(((got.double() - naive_norm(x)).abs() <= tol).all()), (x, got, naive_norm(x))


@FUZZ
@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_minmax_norm_fuzz(data: st.DataObject, dtype: torch.dtype) -> None:
    # +-1e4 keeps hi - lo finite in float16 (the maps normalised in use are float32, in [0, M])
    check_minmax_norm(data.draw(maps(dtype, 1e4 if dtype is torch.float16 else 1e6)))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "values",
    [[[5.0, 5.0, 5.0], [0.0, 0.0, 0.0]], [[0.0]], [[0.0, 1e-30, 1.0]], [[-1e4, 1e4]], [[0.0, 1e-7, 2e-7]]],
    ids=["constant", "one-token", "subnormal", "wide", "below-eps"],
)
def test_minmax_norm_degenerate_maps(values: list[list[float]], dtype: torch.dtype) -> None:
    check_minmax_norm(torch.tensor(values, dtype=dtype))


# ---------------------------------------------------------------------------------------------------------------
# resize_map


@FUZZ
@given(
    images=st.integers(1, 2), grid=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    to_grid=st.tuples(st.integers(1, 12), st.integers(1, 12)), kind=st.sampled_from(["random", "constant", "one_hot"]),
    seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from(DTYPES), transposed=st.booleans(),
)
@example(images=1, grid=(1, 1), to_grid=(12, 12), kind="random", seed=0, dtype=torch.float32, transposed=False)
@example(images=2, grid=(8, 8), to_grid=(1, 1), kind="one_hot", seed=5, dtype=torch.float32, transposed=True)
@example(images=1, grid=(6, 4), to_grid=(3, 8), kind="random", seed=3, dtype=torch.float32, transposed=False)  # mixed
def test_resize_map_fuzz(
    images: int, grid: tuple[int, int], to_grid: tuple[int, int], kind: str, seed: int, dtype: torch.dtype,
    transposed: bool,
) -> None:
    n = grid[0] * grid[1]
    x = torch.rand(images, n, generator=gen(seed), dtype=torch.float64)
    if kind == "constant":
        x = torch.full_like(x, float(x[0, 0]))
    elif kind == "one_hot":
        x = torch.zeros_like(x).index_fill_(1, torch.tensor([seed % n]), 1.0)
    x = x.to(dtype)
    if transposed:
        x = x.t().contiguous().t()
    got = priors.resize_map(x, grid, to_grid)
    assert got.shape == (images, to_grid[0] * to_grid[1]) and got.dtype == dtype
    assert torch.isfinite(got).all()
    if grid == to_grid:
        assert torch.equal(got, x)
        return
    shrink = to_grid[0] <= grid[0] and to_grid[1] <= grid[1]
    wh, ww = axis_weights(grid[0], to_grid[0], shrink), axis_weights(grid[1], to_grid[1], shrink)
    expected = (wh @ x.double().view(images, *grid) @ ww.T).flatten(1)
    tol = 8 * unit(dtype) * float(x.double().abs().amax())
    assert bool(((got.double() - expected).abs() <= tol).all()), (got, expected)
    lo, hi = x.double().amin(-1, keepdim=True), x.double().amax(-1, keepdim=True)
    assert bool(((got.double() >= lo - tol) & (got.double() <= hi + tol)).all())  # no over- or undershoot


# ---------------------------------------------------------------------------------------------------------------
# masks


@st.composite
def unit_maps(draw: st.DrawFn, images: int, n: int, allow_none: bool) -> torch.Tensor | None:
    """``[S, N]`` float32 maps in [0, 1]: random, constant, all-zero, one-hot, nearly constant, or absent."""
    kinds = ["random", "constant", "zeros", "one_hot", "nearly_constant"] + (["none"] if allow_none else [])
    kind, seed = draw(st.sampled_from(kinds)), draw(st.integers(0, 2**31 - 1))
    if kind == "none":
        return None
    x = torch.rand(images, n, generator=gen(seed))
    if kind == "constant":
        return torch.full_like(x, draw(st.sampled_from([1.0, 0.5, 1.0 / 77, 1e-7])))
    if kind == "zeros":
        return torch.zeros_like(x)
    if kind == "one_hot":
        return torch.zeros_like(x).index_fill_(1, torch.tensor([seed % n]), 1.0)
    if kind == "nearly_constant":  # a few float32 ulps apart: below EPS, so no full-range mask out of rounding
        return 0.25 + x * 1e-7
    return x


@FUZZ
@given(
    data=st.data(), images=st.integers(1, 2), n=st.integers(1, 20),
    d=st.one_of(st.sampled_from([0.0, 1e-3, 10.0, 100.0]), st.floats(0.0, 100.0)),
)
def test_masks_fuzz(data: st.DataObject, images: int, n: int, d: float) -> None:
    structure = data.draw(unit_maps(images, n, allow_none=False), label="structure")
    content = data.draw(unit_maps(images, n, allow_none=True), label="content")
    soft, hard = blending.masks(structure, content, d)
    assert soft.shape == hard.shape == (images, n) and soft.dtype == hard.dtype == torch.float32
    assert_unit_interval(soft)
    assert_unit_interval(hard)

    product = structure.double() * (1.0 if content is None else content.double())
    soft_tol = norm_tolerance(product, unit(torch.float32), unit(torch.float32))  # the product is rounded to float32
    assert bool(((soft.double() - naive_norm(product)).abs() <= soft_tol).all())
    expected_hard = 1.0 / (1.0 + torch.exp(-d * (soft.double() - 0.5)))
    assert torch.allclose(hard.double(), expected_hard, rtol=0, atol=1e-6)

    # exact cases: a map whose product is constant (all-zero content, constant maps) gives soft = 0 everywhere
    # and hard = sigmoid(-d / 2); d = 0 gives hard = 1/2 everywhere
    flat = product.amin(-1) == product.amax(-1)
    assert bool((soft[flat] == 0).all())
    flat_hard = hard[flat].double()
    assert torch.allclose(flat_hard, torch.full_like(flat_hard, 1.0 / (1.0 + math.exp(d / 2))), rtol=0, atol=1e-7)
    if d == 0:
        assert bool((hard == 0.5).all())
    # hard is a monotone function of soft, row by row (up to an ulp: torch's vectorised sigmoid and its scalar
    # tail round the same input differently)
    order = soft.argsort(dim=-1, stable=True)
    assert bool((hard.gather(-1, order).diff(dim=-1) >= -2 * unit(torch.float32) * hard.amax()).all())


def test_masks_of_an_all_zero_content_map_with_d_at_its_extremes() -> None:
    structure = torch.rand(1, 6, generator=gen(0))
    for d, expected_hard in ((0.0, 0.5), (100.0, 1.0 / (1.0 + math.exp(50.0)))):
        soft, hard = blending.masks(structure, torch.zeros(1, 6), d)
        assert torch.equal(soft, torch.zeros(1, 6))
        assert torch.allclose(hard.double(), torch.full((1, 6), expected_hard, dtype=torch.float64), rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# blend: every BgMode with every BlendSwitches combination

MASK_KINDS = ("sigmoid", "independent", "ones", "zeros", "binary")


@st.composite
def blend_inputs(draw: st.DrawFn) -> tuple[torch.Tensor, ...]:
    lead = draw(st.sampled_from([(), (1,), (2,)]))  # patching passes [chunks, S, M, D] with [S, M] masks
    images, m_tokens, width = draw(st.integers(1, 2)), draw(st.integers(1, 8)), draw(st.integers(1, 5))
    dtype = draw(st.sampled_from(DTYPES))
    scale = draw(st.sampled_from([0.0, 1e-3, 1.0, 1e3] + ([] if dtype is torch.float16 else [1e6])))
    g = gen(draw(st.integers(0, 2**31 - 1)))
    a_fg, a_bg, a_bl = ((torch.randn(*lead, images, m_tokens, width, generator=g) * scale).to(dtype) for _ in range(3))
    kind = draw(st.sampled_from(MASK_KINDS))
    soft = torch.rand(images, m_tokens, generator=g)
    hard = torch.sigmoid(draw(st.sampled_from([0.0, 10.0, 100.0])) * (soft - 0.5))
    if kind == "independent":
        hard = torch.rand(images, m_tokens, generator=g)
    elif kind in ("ones", "zeros"):
        soft = torch.full_like(soft, float(kind == "ones"))
        hard = torch.full_like(soft, float(draw(st.booleans())))
    elif kind == "binary":
        soft, hard = (torch.rand(images, m_tokens, generator=g) < 0.5).float(), (hard > 0.5).float()
    return a_fg, a_bg, a_bl, soft, hard


@pytest.mark.parametrize("switches", ALL_SWITCHES, ids=lambda sw: f"blend{int(sw.blend)}-fg{int(sw.fg)}-bg{int(sw.bg)}")
@pytest.mark.parametrize("mode", list(BgMode), ids=lambda mode: mode.value)
@settings(parent=FUZZ, max_examples=max(4, FUZZ.max_examples // 3))
@given(inputs=blend_inputs())
def test_blend_fuzz(mode: BgMode, switches: BlendSwitches, inputs: tuple[torch.Tensor, ...]) -> None:
    a_fg, a_bg, a_bl, soft, hard = inputs
    got = blending.blend(a_fg, a_bg, a_bl, soft, hard, mode, switches)
    expected = naive_blend(a_fg, a_bg, a_bl, soft, hard, mode, switches)
    stacked = torch.stack([a_fg, a_bg, a_bl]).double()
    lo, hi, magnitude = stacked.amin(0), stacked.amax(0), float(stacked.abs().amax())
    tol = 16 * unit(a_fg.dtype) * magnitude  # masks rounded to the activations' dtype, up to three chained lerps
    binary = bool(((soft == 0) | (soft == 1)).all() and ((hard == 0) | (hard == 1)).all())
    for out, exp in zip(got, expected):
        assert out.shape == a_fg.shape and out.dtype == a_fg.dtype
        assert torch.isfinite(out).all()
        assert bool(((out.double() - exp).abs() <= tol).all()), (out, exp)
        # each output is a convex combination of the three inputs at the same element
        assert bool(((out.double() >= lo - tol) & (out.double() <= hi + tol)).all())
        if binary:  # 0/1 masks select an input: exact in every dtype
            assert torch.equal(out, exp.to(a_fg.dtype))
    if not switches.any:
        assert all(torch.equal(out, a) for out, a in zip(got, (a_fg, a_bg, a_bl)))
