"""`make bench-gpu`: LayerFusion at the real size, on a GPU, in one process and one short run.

The full-size SDXL UNet architecture with random fp16 weights (built in code, nothing is
downloaded), at 1024x1024 (a 128x128 latent) and a few steps; the cases and the table (targets
included) are `layerfusion_dev.bench_cases`', shared with `make bench`. Measured here: wall time
(synchronised) and the peak of allocated GPU memory of each case. The limit, LayerFusion and the
LoRA merged into the weights are timed in turns, so drift falls on all of them, and so are the
several-foreground cases (K = 1 to 4: the limit and LayerFusion on sets of K + 2 rows); each model is
loaded (ComfyUI's weight patching included) before its timed run, so the times are sampling
alone, and the sequential route's model switches are not counted against it. Prints the table and
writes `bench_gpu.json` and `bench_gpu.md` into the folder given:

    .venv/bin/python -m layerfusion_dev.bench_gpu --out bench/gpu             # CUDA, the real size
    .venv/bin/python -m layerfusion_dev.bench_gpu --device cpu --arch depth1 --latent 8 --steps 1 \\
        --repeats 1 --rank 4 --decode-size 64 --prior-tokens 256 --out /tmp/smoke   # the CPU smoke test's run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

from layerfusion_dev import bench_cases, bench_table
from layerfusion_dev.bench_cases import Size

DEFAULT = Size(arch="sdxl", latent=128, steps=4, repeats=3, rank=256, decode_size=1024, prior_tokens=4096)
MEMORY = "peak GPU memory"  # what tensor_peak is here: torch.cuda.max_memory_allocated


class Meter:
    """Wall time (synchronised) and, on CUDA, the peak of allocated memory of a block."""

    def __init__(self, torch, device) -> None:
        self.torch, self.cuda = torch, device.type == "cuda"
        self.seconds, self.peak = 0.0, None

    def __enter__(self) -> Meter:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.peak = self.torch.cuda.max_memory_allocated()
        self.seconds = time.perf_counter() - self.started


def _fastest(meters: list[Meter]) -> dict:
    return {"seconds": min(m.seconds for m in meters), "tensor_peak": max((m.peak or 0) for m in meters) or None}


def run(device_name: str, size: Size) -> dict:
    from layerfusion_dev.host import import_comfy

    import_comfy(cpu=device_name == "cpu")
    import comfy.model_management as model_management
    import torch

    device = model_management.get_torch_device()
    if device_name == "cuda" and device.type != "cuda":
        raise SystemExit("bench_gpu: --device cuda, but ComfyUI found no CUDA device here (use --device cpu for the smoke run)")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    meter = lambda: Meter(torch, device)

    def log(text: str) -> None:
        sys.stderr.write(f"[bench-gpu] {text}\n")
        sys.stderr.flush()

    cases: dict[str, dict] = {}

    started = time.perf_counter()
    sampling = bench_cases.Sampling(size, dtype)
    build_seconds = time.perf_counter() - started
    log(f"built {size.arch} ({sampling.parameters / 1e9:.2f}B parameters, {dtype}) in {build_seconds:.0f} s")

    def timed(run: bench_cases.Run, steps: int | None = None) -> Meter:
        go = sampling.sampler(run, steps)
        with meter() as m:
            go()
        return m

    def in_turns(names: tuple[str, ...]) -> None:
        runs = {case: sampling.runs(case)[0] for case in names}
        for one in runs.values():  # warm-up: loading, first-call costs
            timed(one, steps=1)
        measured: dict[str, list[Meter]] = {case: [] for case in runs}
        for _ in range(size.repeats):
            for case, one in runs.items():
                measured[case].append(timed(one))
        cases.update({case: _fastest(meters) for case, meters in measured.items()})

    in_turns(bench_cases.IN_TURNS)
    log(f"{', '.join(bench_cases.IN_TURNS)} measured in turns")
    in_turns(bench_cases.FOREGROUND_CASES)
    log(f"several foregrounds (K = {', '.join(map(str, bench_cases.FOREGROUNDS))}) measured in turns")

    for case in ("fusion_prior_pass", "sequential"):
        runs = sampling.runs(case)
        for one in runs:
            timed(one, steps=1)
        fastest = [_fastest([timed(one) for _ in range(size.repeats)]) for one in runs]
        cases[case] = {"seconds": sum(f["seconds"] for f in fastest), "tensor_peak": max((f["tensor_peak"] or 0) for f in fastest) or None}
    log("one LayerFusion run and the sequential route measured")
    model_management.unload_all_models()
    model_management.soft_empty_cache()

    decoding = bench_cases.Decoding(size.decode_size, device, dtype)
    for case in bench_cases.DECODE_CASES:
        decode = decoding.decoding(case)
        decode()  # warm-up
        meters = []
        for _ in range(size.repeats):
            with meter() as m:
                decode()
            meters.append(m)
        cases[case] = _fastest(meters)
    del decoding, decode  # the decoder, before the prior is measured
    log("transparent decode measured")

    prior, full_matrix = bench_cases.prior_case(size.prior_tokens, device, dtype)
    base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    with meter() as m:
        prior()
    cases[bench_cases.PRIOR_CASE] = {"seconds": m.seconds, "tensor_peak": None if m.peak is None else m.peak - base,
                                     "full_matrix": full_matrix}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU"
    return {"device": name, "torch": torch.__version__, "dtype": str(dtype).removeprefix("torch."), **dataclasses.asdict(size),
            "image": size.latent * 8, "build_seconds": build_seconds, "total_seconds": time.perf_counter() - started, "cases": cases}


def table(results: dict) -> list[tuple[str, str, str, str]]:
    size = Size(**{f: results[f] for f in Size.__dataclass_fields__})
    return bench_table.table(results["cases"], "gpu", size, MEMORY)


def markdown(results: dict) -> str:
    head = (f"Measured {time.strftime('%Y-%m-%d')} on {results['device']} (torch {results['torch']}, {results['arch']} "
            f"{results['dtype']}, {results['image']}x{results['image']}, {results['steps']} steps; "
            f"{results['total_seconds']:.0f} s in all).")
    text = bench_table.markdown(head, table(results))
    if part := bench_table.foregrounds_markdown(results["cases"], results["steps"], MEMORY):
        text += "\n\n" + part
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--arch", default=DEFAULT.arch, help="sdxl: SDXL's own width and depth; depth1/full: the tiny test models")
    bench_cases.add_size_arguments(parser, DEFAULT)
    parser.add_argument("--out", type=Path, required=True, help="folder for bench_gpu.json and bench_gpu.md (created)")
    args = parser.parse_args(argv)
    results = run(args.device, dataclasses.replace(bench_cases.size_from_args(args, DEFAULT), arch=args.arch))
    text = markdown(results)
    sys.stdout.write(text + "\n")  # the result table: the command's output
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_gpu.json").write_text(json.dumps({**results, "table": table(results)}, indent=1) + "\n")
    (args.out / "bench_gpu.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
