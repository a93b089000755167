"""`make bench`: LayerFusion's speed and memory on the CPU, as ratios, against the limit and the peers.

The cases and the table (targets included) are `layerfusion_dev.bench_cases`', shared with
`make bench-gpu`. Measured here: each case in a process of its own (so each process peak is its
own), its peak RSS (sampled every 20 ms) and the peak of its live tensor allocations; the step
times of the limit, LayerFusion and the LoRA merged into the weights in one more process
(``in_turns``), timed in turns so the drift of a shared machine falls on all of them alike; the
several-foreground cases (K = 1 to 4) in one more (``foregrounds``), timed in turns, then each
case's tensor peak in the same process (no peak RSS). The sampling cases run on the SDXL
architecture at full width and depth with random weights ("sdxl", a small latent and few steps)
and on the tiny model ("depth1"), but for ``foregrounds``, which runs on the tiny model only unless
asked for (`OPT_IN`). Prints the tables, writes results.json into --out (bench/) and puts the
tables into the README between its bench markers:

    .venv/bin/python -m layerfusion_dev.bench                          # everything (about 20 minutes)
    .venv/bin/python -m layerfusion_dev.bench --again sdxl:foregrounds # K = 1..4 on the SDXL arch (est. 30+ minutes)
    .venv/bin/python -m layerfusion_dev.bench --again sdxl:in_turns    # measure cases again into bench/results.json
    .venv/bin/python -m layerfusion_dev.bench --arch depth1 --cases in_turns prior --latent 8 --steps 1 \\
        --repeats 1 --rank 4 --decode-size 64 --prior-tokens 256 --out /tmp/smoke --no-readme   # a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

from layerfusion_dev import bench_cases, bench_table
from layerfusion_dev.bench_cases import Size
from layerfusion_dev.paths import REPO

log = logging.getLogger("layerfusion.bench")

DEFAULTS = {
    "sdxl": Size(arch="sdxl", latent=16, steps=3, repeats=3, rank=256, decode_size=128, prior_tokens=4096),
    "depth1": Size(arch="depth1", latent=32, steps=6, repeats=5, rank=8, decode_size=128, prior_tokens=4096),
}
SHARED_SIZE = "depth1"  # the decode and prior cases use no UNet: they take this arch's size
LABELS = {"sdxl": "SDXL arch", "depth1": "tiny"}
TURNS = {"in_turns": bench_cases.IN_TURNS, bench_cases.FOREGROUNDS_GROUP: bench_cases.FOREGROUND_CASES}  # process: its cases
ARCH_CASES = (*TURNS, *bench_cases.SAMPLING_CASES)
# left out of a run that names no cases: 18 rows a turn of the 2.6B-parameter UNet on the CPU, an estimated 30+ minutes
# on 2 cores (`make bench-gpu` measures K at the real size); --cases or --again measures it
OPT_IN = {("sdxl", bench_cases.FOREGROUNDS_GROUP)}
SHARED_CASES = (*bench_cases.DECODE_CASES, bench_cases.PRIOR_CASE)
MEMORY = "tensor peak"  # what tensor_peak is here: the peak of live tensor allocations (AllocationTracker)
README_MARKERS = ("<!-- bench:start -->", "<!-- bench:end -->")


# ---- one case, in its own process -----------------------------------------------------------
class RssSampler:
    """The process's peak resident memory while a block runs (sampled every 20 ms)."""

    def __init__(self) -> None:
        import psutil

        self.process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self) -> RssSampler:
        self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def _seconds(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _measure(parts: list, repeats: int, timed: bool = True) -> dict:
    """A case of ``parts`` (each prepares itself, untimed, and returns the call to measure), after a
    warm-up: the fastest of ``repeats`` sums (one, untimed, when not ``timed``) under the RSS
    sampler, then one more round under the allocation tracker (its largest part's peak)."""
    from layerfusion_dev.alloc_tracker import AllocationTracker

    for prepare in parts:
        prepare()()
    with RssSampler() as rss:
        seconds = min(sum(_seconds(prepare()) for prepare in parts) for _ in range(repeats if timed else 1))
    tensor_peak = 0
    for prepare in parts:
        call = prepare()
        with AllocationTracker() as tracker:
            call()
        tensor_peak = max(tensor_peak, tracker.peak)
    return ({"seconds": seconds} if timed else {}) | {"rss_peak": rss.peak, "tensor_peak": tensor_peak}


def _in_turns(sampling: bench_cases.Sampling, cases: tuple[str, ...], size: Size) -> dict:
    """``cases`` timed in turns after a warm-up of one step each: the fastest of ``size.repeats``
    and all of them per case."""
    runs = {name: sampling.runs(name)[0] for name in cases}
    for run in runs.values():  # warm-up
        _seconds(sampling.sampler(run, steps=1))
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(size.repeats):
        for name, run in runs.items():
            timings[name].append(_seconds(sampling.sampler(run)))  # the model is loaded before the clock starts
    return {name: {"seconds": min(t), "all": t} for name, t in timings.items()} | {"steps": size.steps}


def _tensor_peak(sampling: bench_cases.Sampling, case: str) -> int:
    """The peak of live tensor allocations of one run of ``case`` (its model loaded first)."""
    from layerfusion_dev.alloc_tracker import AllocationTracker

    call = sampling.sampler(sampling.runs(case)[0])
    with AllocationTracker() as tracker:
        call()
    return tracker.peak


def run_case(case: str, size: Size) -> dict:
    import torch

    from layerfusion_dev.host import import_comfy

    import_comfy(cpu=True)
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    if case == bench_cases.PRIOR_CASE:  # its own peak only: it allocates little else
        from layerfusion_dev.alloc_tracker import AllocationTracker

        prior, full_matrix = bench_cases.prior_case(size.prior_tokens, cpu, torch.float32)
        with AllocationTracker() as tracker:
            seconds = _seconds(prior)
        return {"seconds": seconds, "tensor_peak": tracker.peak, "largest": tracker.largest, "full_matrix": full_matrix}
    if case in bench_cases.DECODE_CASES:
        decode = bench_cases.Decoding(size.decode_size, cpu, torch.float32).decoding(case)
        return _measure([lambda: decode], size.repeats)
    sampling = bench_cases.Sampling(size)
    if case == "in_turns":
        return _in_turns(sampling, bench_cases.IN_TURNS, size)
    if case == bench_cases.FOREGROUNDS_GROUP:  # timed in turns, then the tensor peak of each case in this process
        measured = _in_turns(sampling, bench_cases.FOREGROUND_CASES, size)
        for name in bench_cases.FOREGROUND_CASES:
            measured[name]["tensor_peak"] = _tensor_peak(sampling, name)
        return measured
    runs = sampling.runs(case)
    parts = [lambda run=run: sampling.sampler(run) for run in runs]  # loading (weight patching) before the clock starts
    return _measure(parts, size.repeats, timed=case not in bench_cases.IN_TURNS) | {"steps": size.steps * len(runs)}


# ---- the table --------------------------------------------------------------------------------
def run_in_subprocess(case: str, size: Size) -> dict:
    command = [sys.executable, "-m", "layerfusion_dev.bench", "--case", case, "--arch", size.arch, *bench_cases.size_arguments(size)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"bench case {case} ({size.arch}) failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(lines[-1])


def arch_cases(measured: dict[str, dict]) -> dict[str, dict]:
    """One arch's cases as the table reads them: the per-process measures, with the step times
    taken from ``in_turns`` and the several-foreground cases from ``foregrounds``."""
    cases = {case: dict(values) for case, values in measured.items() if case not in TURNS}
    for group in TURNS:
        for case, values in measured.get(group, {}).items():
            if isinstance(values, dict):
                cases.setdefault(case, {}).update({k: v for k, v in values.items() if k != "all"})
    return cases


def table(results: dict) -> list[tuple[str, str, str, str]]:
    sizes = {name: Size(**size) for name, size in results["sizes"].items()}
    rows = []
    for arch, measured in results["arch"].items():
        rows += bench_table.table(arch_cases(measured), "cpu", sizes[arch], MEMORY, f"{LABELS.get(arch, arch)}: ")
    return rows + bench_table.table(results["shared"], "cpu", sizes["shared"], MEMORY)


def markdown(results: dict) -> str:
    sizes = "; ".join(f"{LABELS.get(arch, arch)}: {results['sizes'][arch]['latent']}x{results['sizes'][arch]['latent']} latent, "
                      f"{results['sizes'][arch]['steps']} steps" for arch in results["arch"])
    text = bench_table.markdown(f"Measured {time.strftime('%Y-%m-%d')} on {results['machine']} ({sizes}).", table(results))
    for arch, measured in results["arch"].items():
        steps = measured.get(bench_cases.FOREGROUNDS_GROUP, {}).get("steps", results["sizes"][arch]["steps"])
        if part := bench_table.foregrounds_markdown(arch_cases(measured), steps, MEMORY, f"{LABELS.get(arch, arch)}: "):
            text += "\n\n" + part
    return text


def write_readme(text: str) -> None:
    readme = REPO / "README.md"
    content = readme.read_text()
    start, end = README_MARKERS
    if start in content and end in content:
        head, rest = content.split(start, 1)
        readme.write_text(head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=[*DEFAULTS, "both"], default="both", help="the UNet(s) of the sampling cases")
    parser.add_argument("--cases", nargs="+", choices=ARCH_CASES + SHARED_CASES, help="only these cases (default: all)")
    parser.add_argument("--again", nargs="+", metavar="ARCH:CASE",
                        help="measure only these cases again into the results.json in --out (e.g. sdxl:in_turns; "
                             "the decode and prior cases take no arch: any:prior)")
    bench_cases.add_size_arguments(parser, *DEFAULTS.values())
    parser.add_argument("--out", type=Path, default=REPO / "bench", help="folder for results.json (default: bench/)")
    parser.add_argument("--no-readme", action="store_true", help="leave README.md's table as it is")
    parser.add_argument("--case", choices=ARCH_CASES + SHARED_CASES, help=argparse.SUPPRESS)  # one case, in this process
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    arches = list(DEFAULTS) if args.arch == "both" else [args.arch]
    sizes = {arch: bench_cases.size_from_args(args, DEFAULTS[arch]) for arch in DEFAULTS}
    if args.case:
        sys.stdout.write(json.dumps(run_case(args.case, sizes[arches[0] if args.case in ARCH_CASES else SHARED_SIZE])) + "\n")  # to the parent
        return 0
    if args.again:
        plan = [(*item.split(":", 1), "")[:2] for item in args.again]
        if bad := [item for (arch, case), item in zip(plan, args.again) if case not in SHARED_CASES + (ARCH_CASES if arch in DEFAULTS else ())]:
            parser.error(f"--again takes ARCH:CASE, ARCH one of {list(DEFAULTS)}, CASE one of {list(ARCH_CASES + SHARED_CASES)}: not {bad}")
        saved = args.out / "results.json"
        results = json.loads(saved.read_text()) if saved.is_file() else {}
        if "sizes" not in results:
            raise SystemExit(f"{saved}: no results of this bench to measure again into; measure everything first (make bench)")
    else:
        results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, CPU only",
                   "sizes": {}, "arch": {arch: {} for arch in arches}, "shared": {}}
        chosen = args.cases or ARCH_CASES + SHARED_CASES
        plan = [(arch, case) for arch in arches for case in ARCH_CASES if case in chosen and (args.cases or (arch, case) not in OPT_IN)]
        plan += [(SHARED_SIZE, case) for case in SHARED_CASES if case in chosen]
    for arch, case in plan:
        log.info("[bench] %s: %s", arch, case)
        shared = case in SHARED_CASES
        size = sizes[SHARED_SIZE if shared else arch]
        results["sizes"]["shared" if shared else arch] = dataclasses.asdict(size)
        (results["shared"] if shared else results["arch"].setdefault(arch, {}))[case] = run_in_subprocess(case, size)
    results["sizes"].setdefault("shared", dataclasses.asdict(sizes[SHARED_SIZE]))
    text = markdown(results)
    sys.stdout.write(text + "\n")  # the result table: the command's output
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    if not args.no_readme:
        write_readme(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
