"""The benchmark's one table of ratios and targets, shared by both benchmarks (`make bench` on the CPU,
`make bench-gpu` on CUDA): each ratio's cases and measures, its targets per benchmark, and the
several-foreground cases' derived measures (what the K-th foreground adds) and their per-K table.
The cases themselves are in `bench_cases`."""

from __future__ import annotations

from typing import NamedTuple

from .bench_cases import FOREGROUNDS, PRIOR_HEADS, Size, foreground_case


class Ratio(NamedTuple):
    """One row: ``numerator`` / ``denominator``, each (case, measure), and the target on each bench
    ("<= 1.05", "< 1.00"; "" for none). ``{memory}`` in the name is the bench's memory measure (its
    word for ``tensor_peak``), ``{decode_size}`` and ``{prior_tokens}`` the sizes."""

    name: str
    numerator: tuple[str, str]
    denominator: tuple[str, str]
    cpu: str = ""
    gpu: str = ""


_VS_LIMIT = "LayerFusion / limit (3 streams, FG LoRA, no blend)"
_VS_MERGED = "run-time FG LoRA / LoRA merged into the weights (all rows)"
_VS_SEQUENTIAL = "one LayerFusion run (prior pass) / sequential route"
ADDED_STEP = ("<= 1.50", "<= 1.50")  # (cpu, gpu): the K-th foreground's added step time / K = 1's step time per row
# (cpu, gpu): LayerFusion's added memory / the limit's, per foreground; measured 1.033 for each K (tiny, CPU tensor peak)
ADDED_MEMORY = ("<= 1.10", "<= 1.10")


def _foreground_ratios() -> tuple[Ratio, ...]:
    """Each K > 1 of `FOREGROUNDS`: LayerFusion against its limit (K = 1's bounds), what the K-th
    foreground adds to LayerFusion's step time (`added`) against K = 1's step time per row, and what
    it adds to LayerFusion's memory against what it adds to the limit's."""
    rows = []
    for k in FOREGROUNDS[1:]:
        fusion, limit = foreground_case("fusion", k), foreground_case("limit", k)
        vs_limit = f"LayerFusion / limit, {k} foregrounds ({k + 2} rows)"
        rows += [
            Ratio(f"{vs_limit}, step time (timed in turns)", (fusion, "seconds"), (limit, "seconds"), "<= 1.10", "<= 1.05"),
            Ratio(f"{vs_limit}, {{memory}}", (fusion, "tensor_peak"), (limit, "tensor_peak"), "<= 1.05", "<= 1.03"),
            Ratio(f"LayerFusion, step time added by foreground {k} / one foreground's step time per row",
                  (fusion, "added_seconds"), (foreground_case("fusion", 1), "per_row_seconds"), *ADDED_STEP),
            Ratio(f"{{memory}} added by foreground {k}, LayerFusion / limit", (fusion, "added_tensor_peak"),
                  (limit, "added_tensor_peak"), *ADDED_MEMORY),
        ]
    return tuple(rows)


RATIOS = (
    Ratio(f"{_VS_LIMIT}, step time (timed in turns)", ("fusion", "seconds"), ("limit", "seconds"), "<= 1.10", "<= 1.05"),
    Ratio(f"{_VS_LIMIT}, peak RSS", ("fusion", "rss_peak"), ("limit", "rss_peak"), "<= 1.05"),
    Ratio(f"{_VS_LIMIT}, {{memory}}", ("fusion", "tensor_peak"), ("limit", "tensor_peak"), "<= 1.05", "<= 1.03"),
    Ratio(f"{_VS_MERGED}, step time (timed in turns)", ("limit", "seconds"), ("merged", "seconds")),
    Ratio(f"{_VS_MERGED}, peak RSS", ("limit", "rss_peak"), ("merged", "rss_peak")),
    Ratio(f"{_VS_MERGED}, {{memory}}", ("limit", "tensor_peak"), ("merged", "tensor_peak")),
    Ratio(f"{_VS_SEQUENTIAL}, time", ("fusion_prior_pass", "seconds"), ("sequential", "seconds")),
    Ratio(f"{_VS_SEQUENTIAL}, peak RSS", ("fusion_prior_pass", "rss_peak"), ("sequential", "rss_peak")),
    Ratio(f"{_VS_SEQUENTIAL}, {{memory}}", ("fusion_prior_pass", "tensor_peak"), ("sequential", "tensor_peak")),
    Ratio("transparent decode at {decode_size}px, 8 passes batched / one by one, time",
          ("decode_batched", "seconds"), ("decode_loop", "seconds"), "< 1.00", "< 1.00"),
    Ratio("transparent decode at {decode_size}px, 8 passes batched / one by one, {memory}",
          ("decode_batched", "tensor_peak"), ("decode_loop", "tensor_peak")),
    Ratio("transparent decode at {decode_size}px, augmentation off / on (batched), time", ("decode_off", "seconds"), ("decode_batched", "seconds")),
    Ratio(f"structure prior at {{prior_tokens}} tokens, {PRIOR_HEADS} heads: {{memory}} / one heads x M x M matrix",
          ("prior", "tensor_peak"), ("prior", "full_matrix"), "< 1.00", "< 1.00"),
    *_foreground_ratios(),
)


def met(value: float, target: str) -> bool:
    op, bound = target.split()
    return value < float(bound) if op == "<" else value <= float(bound)


def added(cases: dict[str, dict]) -> dict[str, dict]:
    """``cases`` with the several-foreground cases' derived measures: ``per_row_seconds`` of K = 1
    (its time over its three rows) and ``added_seconds`` and ``added_tensor_peak`` of each K > 1 (its
    measure less K - 1's: what the K-th foreground adds); None where a measure is None."""
    cases = {case: dict(values) for case, values in cases.items()}
    for kind in ("limit", "fusion"):
        first = cases.get(foreground_case(kind, 1), {})
        if "seconds" in first:
            first["per_row_seconds"] = None if first["seconds"] is None else first["seconds"] / 3
        for measure in ("seconds", "tensor_peak"):
            for k in FOREGROUNDS[1:]:
                this, before = cases.get(foreground_case(kind, k), {}), cases.get(foreground_case(kind, k - 1), {})
                if measure in this and measure in before:
                    a, b = this[measure], before[measure]
                    this[f"added_{measure}"] = None if a is None or b is None else a - b
    return cases


def table(cases: dict[str, dict], bench: str, size: Size, memory: str, label: str = "") -> list[tuple[str, str, str, str]]:
    """The rows of `RATIOS` that ``cases`` ({case: {measure: value}}) can fill, as (measure, value,
    target, met) for ``bench`` ("cpu" or "gpu"); a measure recorded as None (no CUDA in a smoke run)
    shows "n/a". ``label`` prefixes each row's name."""
    cases = added(cases)
    rows = []
    for ratio in RATIOS:
        (num_case, num), (den_case, den) = ratio.numerator, ratio.denominator
        if num not in cases.get(num_case, {}) or den not in cases.get(den_case, {}):
            continue
        a, b = cases[num_case][num], cases[den_case][den]
        value = a / b if a is not None and b else None
        target = ratio.cpu if bench == "cpu" else ratio.gpu
        ok = "" if not target or value is None else ("yes" if met(value, target) else "NO")
        name = ratio.name.format(memory=memory, decode_size=size.decode_size, prior_tokens=size.prior_tokens)
        rows.append((label + name, "n/a" if value is None else f"{value:.3f}", target, ok))
    return rows


def markdown(head: str, rows: list[tuple[str, str, str, str]]) -> str:
    lines = [head, "", "| measure | value | target | met |", "|---|---|---|---|"]
    return "\n".join(lines + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows])


def foregrounds_markdown(cases: dict[str, dict], steps: int, memory: str, label: str = "") -> str:
    """The several-foreground cases as measured, one row per K (none measured: ""): seconds per step
    and ``memory`` (MiB) of the limit and LayerFusion, and what the K-th foreground adds to each."""
    cases = added(cases)
    measured = [k for k in FOREGROUNDS if all(foreground_case(kind, k) in cases for kind in ("limit", "fusion"))]
    if not measured:
        return ""

    def shown(k: int, measure: str) -> str:
        """limit / LayerFusion: seconds per step, or MiB."""
        values = [cases[foreground_case(kind, k)].get(measure) for kind in ("limit", "fusion")]
        if "seconds" in measure:
            return " / ".join("n/a" if v is None else f"{v / steps:.3f}" for v in values)
        return " / ".join("n/a" if v is None else f"{v / 2**20:.1f}" for v in values)

    lines = [f"{label}several foregrounds (a set of K + 2 rows, timed in turns; each cell: limit / LayerFusion):", "",
             f"| K (rows) | s/step | added by the K-th, s/step | {memory}, MiB | added by the K-th, MiB |", "|---|---|---|---|---|"]
    for k in measured:
        added_time, added_memory = (shown(k, m) if k > 1 else "" for m in ("added_seconds", "added_tensor_peak"))
        lines.append(f"| {k} ({k + 2}) | {shown(k, 'seconds')} | {added_time} | {shown(k, 'tensor_peak')} | {added_memory} |")
    return "\n".join(lines)
