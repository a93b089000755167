"""LayerFusion's priors as plain functions (docs/method.md): the structure prior from a block's
self-attention and the content confidence from the EOS token's cross-attention.

Shapes: ``q``/``k`` are attention projections ``[S, M, heads * dim]`` (S images, M query tokens);
maps are ``[S, M]``. No function here builds a ``heads x M x M`` tensor: self-attention rows are
taken in chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6
PRIOR_CHUNK_ELEMENTS = 1 << 24  # at most this many attention probabilities exist at once


def minmax_norm(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Min-max over the last axis (the tokens of one image): ``(x - min) / (max - min + eps)``."""
    lo = x.amin(dim=-1, keepdim=True)
    hi = x.amax(dim=-1, keepdim=True)
    return (x - lo) / (hi - lo + eps)


def quantile_norm(x: torch.Tensor, quantile: float, eps: float = EPS) -> torch.Tensor:
    """Min-max with the top at ``quantile`` of the last axis instead of its max, clamped to [0, 1]:
    ``clamp((x - min) / (q(x) - min + eps), 0, 1)``; the tokens above the quantile all map to 1, so a
    few outliers (a bright border row) no longer set the scale. ``quantile >= 1`` is `minmax_norm`
    exactly."""
    if quantile >= 1.0:
        return minmax_norm(x, eps)
    lo = x.amin(dim=-1, keepdim=True)
    hi = torch.quantile(x.float(), quantile, dim=-1, keepdim=True).to(x.dtype)
    return ((x - lo) / (hi - lo + eps)).clamp(0.0, 1.0)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    s, m, hd = x.shape
    return x.view(s, m, heads, hd // heads).transpose(1, 2)  # [S, heads, M, dim]


def structure_prior(q: torch.Tensor, k: torch.Tensor, heads: int, max_elements: int = PRIOR_CHUNK_ELEMENTS) -> torch.Tensor:
    """``s' = 1 - norm(1 / sum_j m_ij^2)`` with ``m`` the head-averaged self-attention probabilities.

    Rows of ``m`` are computed a chunk at a time (``heads x rows x M`` at most ``max_elements``),
    in float32. Returns ``[S, M]`` in [0, 1]; a map whose spread is below float32's resolution of
    the sum (nearly flat attention) is 1 everywhere, like an exactly flat one."""
    qh, kh = _heads(q.float(), heads), _heads(k.float(), heads)
    scale = qh.shape[-1] ** -0.5
    m_tokens = qh.shape[2]
    rows = max(1, max_elements // max(1, heads * kh.shape[2]))
    sums = []
    for start in range(0, m_tokens, rows):
        probs = torch.softmax(qh[:, :, start : start + rows] @ kh.transpose(-1, -2) * scale, dim=-1)  # [S, h, r, M]
        sums.append(probs.mean(dim=1).square().sum(dim=-1))  # [S, r]
    s = 1.0 / torch.cat(sums, dim=1).clamp_min(EPS)
    # Nearly flat attention: s varies less than float32 resolves over M summed terms; min-max would
    # stretch rounding noise to [0, 1], so such a map counts as constant (s' = 1 everywhere).
    lo, hi = s.amin(dim=-1, keepdim=True), s.amax(dim=-1, keepdim=True)
    resolvable = (hi - lo) > hi * (4 * m_tokens * torch.finfo(torch.float32).eps)
    return 1.0 - torch.where(resolvable, minmax_norm(s), torch.zeros_like(s))


def content_confidence(q: torch.Tensor, k: torch.Tensor, heads: int, eos_index: int | torch.Tensor) -> torch.Tensor:
    """The head-averaged cross-attention probability of text token ``eos_index``: ``[S, M]`` in [0, 1].

    ``q [S, M, heads*dim]``, ``k [S, T, heads*dim]`` (T text tokens); ``eos_index`` one token for
    every image, or a long tensor ``[S]`` with each image's own (each foreground's prompt)."""
    qh, kh = _heads(q.float(), heads), _heads(k.float(), heads)
    probs = torch.softmax(qh @ kh.transpose(-1, -2) * qh.shape[-1] ** -0.5, dim=-1)  # [S, h, M, T]
    if isinstance(eos_index, int):
        return probs[..., eos_index].mean(dim=1)
    index = eos_index.to(probs.device).view(-1, 1, 1, 1).expand(*probs.shape[:-1], 1)
    return probs.gather(-1, index)[..., 0].mean(dim=1)


def resize_map(values: torch.Tensor, grid: tuple[int, int], to_grid: tuple[int, int]) -> torch.Tensor:
    """A ``[S, h*w]`` map on ``grid`` (h, w) resampled to ``to_grid``: area when shrinking, bilinear otherwise."""
    if tuple(grid) == tuple(to_grid):
        return values
    image = values.view(values.shape[0], 1, *grid)
    shrink = to_grid[0] <= grid[0] and to_grid[1] <= grid[1]
    out = F.interpolate(image, size=to_grid, mode="area") if shrink else F.interpolate(image, size=to_grid, mode="bilinear", align_corners=False)
    return out.flatten(1)
