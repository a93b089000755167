"""`make bench`: LayerFusion's speed and memory, as ratios, against the limit and the peers.

Each case runs in a process of its own (so each process peak is its own), on the SDXL
architecture at full width and depth with random weights ("sdxl", a small latent and few steps)
and on the tiny model. Prints a table, writes bench/results.json, and puts the table into the
README between its bench markers.

    .venv/bin/python -m layerfusion_dev.bench            # both architectures
    .venv/bin/python -m layerfusion_dev.bench --arch tiny
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SETTINGS = {  # arch -> (latent side, steps, LoRA rank, timed repeats: the fastest counts)
    "sdxl": (16, 3, 256, 3),
    "depth1": (32, 6, 8, 5),
}
CASES = ("limit", "fusion", "time_pair", "fusion_prior_pass", "merged", "sequential", "decode_batched", "decode_loop", "decode_off", "prior_memory")


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


def _conds(width_ctx: int, width_pooled: int, rows: int, seed: int) -> list:
    import torch

    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(rows, 77, width_ctx, generator=gen), {"pooled_output": torch.randn(rows, width_pooled, generator=gen),
                                                                  "layerfusion_eos": 5}]]


def run_case(case: str, arch: str) -> dict:
    import torch

    from layerfusion_dev.alloc_tracker import AllocationTracker
    from layerfusion_dev.host import import_comfy

    import_comfy()
    import comfy.sample

    from layerfusion_dev.pack import import_pack

    import_pack()
    from layerfusion.layerfusion_core.fusion import priors
    from layerfusion.layerfusion_core.fusion.settings import FusionSettings, PriorMode
    from layerfusion.layerfusion_core.layout.rows import Branch
    from layerfusion.layerfusion_core.patching.branch_lora import apply_branch_lora
    from layerfusion.layerfusion_core.patching.calls import enable_layered_batch
    from layerfusion.layerfusion_core.patching.layerdiffuse_conditional import layerdiffuse_conditional
    from layerfusion.layerfusion_core.patching.layerfusion import apply_layerfusion
    from layerfusion.layerfusion_core.transparency import codec
    from layerfusion.layerfusion_core.transparency.networks import SIZE_MULTIPLE, TransparentDecoder
    from layerfusion.layerfusion_core.weights import lora_files
    from layerfusion_dev.testnodes import standins, tiny_sdxl

    torch.manual_seed(0)
    if case == "prior_memory":  # SDXL's last block at 1024x1024: 64x64 tokens, 10 heads
        heads, tokens = 10, 4096
        q, k = torch.randn(1, tokens, heads * 64), torch.randn(1, tokens, heads * 64)
        with AllocationTracker() as tracker:
            started = time.perf_counter()
            priors.structure_prior(q, k, heads)
        return {"seconds": time.perf_counter() - started, "tensor_peak": tracker.peak, "largest": tracker.largest,
                "full_matrix": heads * tokens * tokens * 4}
    if case.startswith("decode"):
        decoder = TransparentDecoder().eval()
        decoder.load_state_dict({k: v.float() for k, v in standins.exact_standin(standins.DECODER_FILE).items()})
        pixels, latent = torch.rand(1, 3, 128, 128), torch.randn(1, 4, 16, 16)
        variants = codec.IDENTITY if case == "decode_off" else codec.AUGMENTATIONS
        sub_batch = 1 if case == "decode_loop" else 8
        timings = []
        with torch.inference_mode(), RssSampler() as rss:
            for _ in range(3):
                started = time.perf_counter()
                codec.decode_rgba(decoder, pixels, latent, size_multiple=SIZE_MULTIPLE, augmentations=variants, sub_batch=sub_batch)
                timings.append(time.perf_counter() - started)
        return {"seconds": min(timings), "rss_peak": rss.peak}

    side, steps, rank, repeats = SETTINGS[arch]
    config = tiny_sdxl.unet_config(arch)
    unet = tiny_sdxl.build_unet(arch, seed=0)
    shapes = standins.unet_shapes(unet)
    lora = lora_files.load_frozen("layer_xl_transparent_attn.safetensors", standins.attn_lora_standin(shapes, rank=rank), shapes)
    ctx, pooled = config["context_dim"], config["adm_in_channels"] - tiny_sdxl.SIZE_EMBEDDINGS

    def sample(model, rows: int, positive, negative) -> float:
        noise = torch.randn(rows, 4, side, side, generator=torch.Generator().manual_seed(1))
        started = time.perf_counter()
        comfy.sample.sample(model, noise, steps, 5.0, "euler", "normal", positive, negative, torch.zeros_like(noise),
                            seed=0, disable_pbar=True)
        return time.perf_counter() - started

    pos, neg = _conds(ctx, pooled, 3, 2), _conds(ctx, pooled, 3, 3)
    if case == "sequential":
        one_pos, one_neg = _conds(ctx, pooled, 1, 2), _conds(ctx, pooled, 1, 3)
        fg = apply_branch_lora(unet, lora, Branch.FG, 1.0)
        runs = [(fg, one_pos, one_neg)]
        for conditions in (1, 2):
            tensors = standins.conditional_standin(shapes, conditions, rank=rank)
            cond_lora = lora_files.load_frozen("cond.safetensors", tensors, shapes, allow_widened_input=True)
            latents = [torch.randn(1, 4, side, side) for _ in range(conditions)]
            runs.append(layerdiffuse_conditional(unet, one_pos, one_neg, latents, cond_lora, 1.0, 1.0))
        for model, p, n in runs:  # warm-up
            sample(model, 1, p, n)
        with RssSampler() as rss:
            seconds = min(sum(sample(model, 1, p, n) for model, p, n in runs) for _ in range(repeats))
        return {"seconds": seconds, "rss_peak": rss.peak, "steps": 3 * steps}

    if case == "time_pair":  # the limit and LayerFusion timed in turns in one process: drift of a shared machine cancels
        limit = apply_branch_lora(enable_layered_batch(unet), lora, Branch.FG, 1.0)
        fusion = apply_layerfusion(limit, FusionSettings(prior_mode=PriorMode.IN_RUN, prior_at=1.0))
        models = {"limit": limit, "fusion": fusion}
        for model in models.values():  # warm-up
            sample(model, 3, pos, neg)
        timings = {name: [] for name in models}
        for _ in range(repeats):
            for name, model in models.items():
                timings[name].append(sample(model, 3, pos, neg))
        return {name: {"seconds": min(t), "all": t} for name, t in timings.items()} | {"steps": steps}

    model = enable_layered_batch(unet)
    if case == "merged":
        import comfy.weight_adapter

        model = unet.clone()
        model.add_patches({f"{p}.weight": comfy.weight_adapter.LoRAAdapter(set(), (f.up, f.down, None, None, None, None))
                           for p, f in lora.low_rank.items()}, 1.0)
    else:
        model = apply_branch_lora(model, lora, Branch.FG, 1.0)
    if case == "fusion":
        model = apply_layerfusion(model, FusionSettings(prior_mode=PriorMode.IN_RUN, prior_at=1.0))
    elif case == "fusion_prior_pass":
        model = apply_layerfusion(model, FusionSettings())
    sample(model, 3, pos, neg)  # warm-up (loads, first-call costs)
    with RssSampler() as rss:
        seconds = min(sample(model, 3, pos, neg) for _ in range(repeats))
    with AllocationTracker() as tracker:
        sample(model, 3, pos, neg)
    return {"seconds": seconds, "rss_peak": rss.peak, "tensor_peak": tracker.peak, "steps": steps}


# ---- the table --------------------------------------------------------------------------------
def run_in_subprocess(case: str, arch: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--case", case, "--arch", arch], capture_output=True, text=True, timeout=3600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"bench case {case} ({arch}) failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(lines[-1])


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def table(results: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    for arch, r in results["arch"].items():
        label = "SDXL arch" if arch == "sdxl" else "tiny"
        paired = {"fusion": r["time_pair"]["fusion"], "limit": r["time_pair"]["limit"]}
        for name, num, den, target in (
            ("LayerFusion step time / limit (3 streams, FG LoRA, no blend; timed in turns)", ("fusion", "seconds"), ("limit", "seconds"), 1.10),
            ("LayerFusion peak RSS / limit", ("fusion", "rss_peak"), ("limit", "rss_peak"), 1.05),
            ("LayerFusion tensor peak / limit", ("fusion", "tensor_peak"), ("limit", "tensor_peak"), 1.05),
            ("run-time FG LoRA step time / LoRA merged into the weights (all rows)", ("limit", "seconds"), ("merged", "seconds"), None),
            ("run-time FG LoRA peak RSS / LoRA merged into the weights (all rows)", ("limit", "rss_peak"), ("merged", "rss_peak"), None),
            ("one LayerFusion run (prior pass) / sequential route, time", ("fusion_prior_pass", "seconds"), ("sequential", "seconds"), None),
            ("one LayerFusion run (prior pass) / sequential route, peak RSS", ("fusion_prior_pass", "rss_peak"), ("sequential", "rss_peak"), None),
        ):
            time_target = target is not None and num[1] == "seconds"
            source = paired if time_target else r
            value = ratio(source[num[0]][num[1]], source[den[0]][den[1]])
            ok = "" if target is None else ("yes" if value <= target else "NO")
            rows.append((f"{label}: {name}", f"{value:.3f}", "" if target is None else f"<= {target:.2f}", ok))
    d = results["decode"]
    rows.append(("transparent decode, 8 passes batched / one by one", f"{ratio(d['decode_batched']['seconds'], d['decode_loop']['seconds']):.3f}", "< 1", ""))
    rows.append(("transparent decode, augmentation off / on (batched)", f"{ratio(d['decode_off']['seconds'], d['decode_batched']['seconds']):.3f}", "", ""))
    p = results["prior"]
    rows.append(("structure prior at 64x64 tokens, 10 heads: tensor peak (MB) vs one heads x M x M (MB)",
                 f"{p['tensor_peak'] / 2**20:.0f} vs {p['full_matrix'] / 2**20:.0f}", "< full", "yes" if p["tensor_peak"] < p["full_matrix"] else "NO"))
    return rows


def markdown(rows, machine: str) -> str:
    out = [f"Measured {time.strftime('%Y-%m-%d')} on {machine}.", "", "| measure | value | target | met |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["sdxl", "depth1", "both"], default="both")
    parser.add_argument("--case", choices=CASES)
    parser.add_argument("--again", nargs="*", metavar="ARCH:CASE",
                        help="measure only these cases again (e.g. sdxl:limit sdxl:fusion) into bench/results.json")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, "depth1" if args.arch == "both" else args.arch)))
        return 0
    arches = ["sdxl", "depth1"] if args.arch == "both" else [args.arch]
    results = {"arch": {}, "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, CPU only"}
    if args.again:
        results = json.loads((REPO / "bench" / "results.json").read_text())
        for item in args.again:
            arch, case = item.split(":")
            print(f"[bench] {arch}: {case} (again)", file=sys.stderr)
            results["arch"][arch][case] = run_in_subprocess(case, arch)
        arches = []
    for arch in arches:
        results["arch"][arch] = {}
        for case in ("limit", "fusion", "time_pair", "fusion_prior_pass", "merged", "sequential"):
            print(f"[bench] {arch}: {case}", file=sys.stderr)
            results["arch"][arch][case] = run_in_subprocess(case, arch)
    if not args.again:
        results["decode"] = {case: run_in_subprocess(case, "depth1") for case in ("decode_batched", "decode_loop", "decode_off")}
        results["prior"] = run_in_subprocess("prior_memory", "depth1")
    rows = table(results)
    text = markdown(rows, results["machine"])
    print(text)
    (REPO / "bench").mkdir(exist_ok=True)
    (REPO / "bench" / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    readme = REPO / "README.md"
    content = readme.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start in content and end in content:
        head, rest = content.split(start, 1)
        readme.write_text(head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
