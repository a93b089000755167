"""Naive re-implementations of the method's equations, written from docs/method.md with Python
floats, token by token, for the tests to hold the real code against."""

from __future__ import annotations

import itertools

import torch

from layerfusion.layerfusion_core.fusion.blending import BgMode
from layerfusion.layerfusion_core.fusion.priors import EPS


def naive_norm(values: list[float]) -> list[float]:
    lo, hi = min(values), max(values)
    return [(v - lo) / (hi - lo + EPS) for v in values]


def naive_attention_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """The full softmax matrix per head: [heads, M, T] for one image (q [M, h*d], k [T, h*d])."""
    d = q.shape[-1] // heads
    out = []
    for h in range(heads):
        qh, kh = q[:, h * d:(h + 1) * d].double(), k[:, h * d:(h + 1) * d].double()
        logits = qh @ kh.T / d**0.5
        out.append(torch.exp(logits) / torch.exp(logits).sum(dim=-1, keepdim=True))
    return torch.stack(out)


def naive_stack(a_fgs, a_bg, a_bl, softs, hards, mode, switches):
    """Token by token, with Python floats: each object into the composite bottom first, the composite
    then back into that object, the background exchange with 1 - prod(1 - soft_k)."""
    k_count = len(a_fgs)
    s_count, m_count, d_count = a_bg.shape
    fgs = [torch.zeros_like(a_bg) for _ in range(k_count)]
    bg, bl = torch.zeros_like(a_bg), torch.zeros_like(a_bg)
    for s, m in itertools.product(range(s_count), range(m_count)):
        soft = [float(x[s, m]) for x in softs]
        hard = [float(x[s, m]) for x in hards]
        anywhere = 1.0
        for value in soft:
            anywhere *= 1.0 - value
        anywhere = 1.0 - anywhere
        for d in range(d_count):
            composite = float(a_bl[s, m, d])
            for k in range(k_count):
                obj = float(a_fgs[k][s, m, d])
                if switches.blend:
                    composite = obj * soft[k] + composite * (1 - soft[k])
                fgs[k][s, m, d] = composite * hard[k] + obj * (1 - hard[k]) if switches.fg else obj
            back = float(a_bg[s, m, d])
            bg[s, m, d] = back
            if switches.bg and mode is BgMode.BG_FROM_BL:
                bg[s, m, d] = back * anywhere + composite * (1 - anywhere)
            elif switches.bg and mode is BgMode.BL_FROM_BG:
                composite = composite * anywhere + back * (1 - anywhere)
            bl[s, m, d] = composite
    return fgs, bg, bl


