"""`make bench-gpu`: LayerFusion at the real size, on a GPU, in one process and one short run.

The full-size SDXL UNet architecture with random fp16 weights (built in code, nothing is
downloaded), at 1024x1024 (a 128x128 latent) and a few steps, measured side by side:

- LayerFusion's step time and peak GPU memory against the limit (the same three-stream batch
  with the FG LoRA, no blending), timed in turns so drift falls on both;
- the run-time FG-row LoRA against the same LoRA merged into the weights (ComfyUI's weight patch,
  every row; the pack's former 'merged copy' mode is gone, so this is the merged reference);
- one LayerFusion run (prior pass) against LayerDiffuse's sequential route to the same three
  images (foreground, fg2ble, fgble2bg);
- Transparent Decode's 8-way augmentation batched against one pass at a time, at 1024px;
- the structure prior's peak memory at 64x64 tokens against one heads x M x M matrix.

Loading a model (and ComfyUI's weight patching) happens before each timed run, so the times are
sampling alone; the sequential route's three model switches are not counted against it.
Prints a table (with the targets: step <= 1.05x the limit, peak <= 1.03x, batched decode faster
than the loop) and writes `bench_gpu.json` into the folder given:

    .venv/bin/python -m layerfusion_dev.bench_gpu --out bench/gpu             # CUDA, the real size
    .venv/bin/python -m layerfusion_dev.bench_gpu --device cpu --arch depth1 --latent 8 --steps 1 \\
        --decode-size 64 --prior-tokens 256 --out /tmp/smoke        # the CPU smoke run `make test` does
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

TARGETS = {"step": 1.05, "peak": 1.03, "decode": 1.0}


def _host(device: str):
    """ComfyUI on sys.path, on the CPU only when asked (model management reads this at import)."""
    from layerfusion_dev.paths import comfyui_dir

    host = comfyui_dir()
    if str(host) not in sys.path:
        sys.path.insert(0, str(host))
    import comfy.cli_args

    comfy.cli_args.args.cpu = device == "cpu"
    import comfy.model_management

    return comfy.model_management


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


def run(args) -> dict:
    model_management = _host(args.device)
    import comfy.sample
    import comfy.weight_adapter
    import torch

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

    device = model_management.get_torch_device()
    if args.device == "cuda" and device.type != "cuda":
        raise SystemExit("bench_gpu: --device cuda, but ComfyUI found no CUDA device here (use --device cpu for the smoke run)")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    meter = lambda: Meter(torch, device)  # noqa: E731
    timings: dict[str, dict] = {}
    log = lambda text: print(f"[bench-gpu] {text}", file=sys.stderr, flush=True)  # noqa: E731

    started = time.perf_counter()
    unet = tiny_sdxl.build_unet(args.arch, seed=0, dtype=dtype)
    shapes = standins.unet_shapes(unet)
    lora = lora_files.load_frozen("layer_xl_transparent_attn.safetensors", standins.attn_lora_standin(shapes, rank=args.rank), shapes)
    config = tiny_sdxl.unet_config(args.arch)
    ctx, pooled = config["context_dim"], config["adm_in_channels"] - tiny_sdxl.SIZE_EMBEDDINGS
    build_seconds = time.perf_counter() - started
    log(f"built {args.arch} ({sum(p.numel() for p in unet.model.parameters()) / 1e9:.2f}B parameters, {dtype}) in {build_seconds:.0f} s")

    def conds(rows: int, seed: int) -> list:
        gen = torch.Generator().manual_seed(seed)
        return [[torch.randn(rows, 77, ctx, generator=gen).to(dtype),
                 {"pooled_output": torch.randn(rows, pooled, generator=gen).to(dtype), "layerfusion_eos": 5}]]

    def sample(model, rows: int, positive, negative, steps: int = args.steps) -> Meter:
        noise = torch.randn(rows, 4, args.latent, args.latent, generator=torch.Generator().manual_seed(1))
        model_management.load_models_gpu([model])  # loading (and weight patching) is not timed: the sampler finds it loaded
        with meter() as m:
            comfy.sample.sample(model, noise, steps, 5.0, "euler", "normal", positive, negative, torch.zeros_like(noise),
                                seed=0, disable_pbar=True)
        return m

    pos, neg = conds(3, 2), conds(3, 3)
    limit = apply_branch_lora(enable_layered_batch(unet), lora, Branch.FG, 1.0)
    fusion = apply_layerfusion(limit, FusionSettings(prior_mode=PriorMode.IN_RUN, prior_at=1.0))
    merged = unet.clone()
    merged.add_patches({f"{p}.weight": comfy.weight_adapter.LoRAAdapter(set(), (f.up, f.down, None, None, None, None))
                        for p, f in lora.low_rank.items()}, 1.0)
    merged = enable_layered_batch(merged)
    paired = {"limit": limit, "fusion": fusion, "merged": merged}
    for model in paired.values():  # warm-up: loading, first-call costs
        sample(model, 3, pos, neg, steps=1)
    runs = {name: [] for name in paired}
    for _ in range(args.repeats):  # in turns
        for name, model in paired.items():
            runs[name].append(sample(model, 3, pos, neg))
    for name, measured in runs.items():
        timings[name] = {"seconds_per_step": min(m.seconds for m in measured) / args.steps,
                         "peak_bytes": max((m.peak or 0) for m in measured) or None}
    log("limit, fusion and merged measured")

    one_pos, one_neg = conds(1, 2), conds(1, 3)
    sequential = [(apply_branch_lora(unet, lora, Branch.FG, 1.0), one_pos, one_neg)]
    for conditions in (1, 2):
        tensors = standins.conditional_standin(shapes, conditions, rank=args.rank)
        cond_lora = lora_files.load_frozen("cond.safetensors", tensors, shapes, allow_widened_input=True)
        latents = [torch.randn(1, 4, args.latent, args.latent) for _ in range(conditions)]
        sequential.append(layerdiffuse_conditional(unet, one_pos, one_neg, latents, cond_lora, 1.0, 1.0))
    prior_pass = apply_layerfusion(limit, FusionSettings())
    sample(prior_pass, 3, pos, neg, steps=1)
    for model, p, n in sequential:
        sample(model, 1, p, n, steps=1)
    one_run = min((sample(prior_pass, 3, pos, neg) for _ in range(args.repeats)), key=lambda m: m.seconds)
    route = [min((sample(model, 1, p, n) for _ in range(args.repeats)), key=lambda m: m.seconds) for model, p, n in sequential]
    timings["fusion_prior_pass"] = {"seconds": one_run.seconds, "peak_bytes": one_run.peak}
    timings["sequential"] = {"seconds": sum(m.seconds for m in route), "peak_bytes": max((m.peak or 0) for m in route) or None}
    log("one LayerFusion run and the sequential route measured")
    model_management.unload_all_models()
    model_management.soft_empty_cache()

    decoder = TransparentDecoder().eval()
    decoder.load_state_dict({k: v.float() for k, v in standins.exact_standin(standins.DECODER_FILE).items()})
    decoder = decoder.to(device=device, dtype=dtype)
    side = args.decode_size
    pixels = torch.rand(1, 3, side, side, device=device, dtype=dtype)
    latent = torch.randn(1, 4, side // 8, side // 8, device=device, dtype=dtype)
    for name, sub_batch in (("decode_batched", 8), ("decode_loop", 1)):
        measured = []
        with torch.inference_mode():
            codec.decode_rgba(decoder, pixels, latent, size_multiple=SIZE_MULTIPLE,
                                     augmentations=codec.AUGMENTATIONS, sub_batch=sub_batch)  # warm-up
            for _ in range(args.repeats):
                with meter() as m:
                    codec.decode_rgba(decoder, pixels, latent, size_multiple=SIZE_MULTIPLE,
                                             augmentations=codec.AUGMENTATIONS, sub_batch=sub_batch)
                measured.append(m)
        timings[name] = {"seconds": min(m.seconds for m in measured), "peak_bytes": max((m.peak or 0) for m in measured) or None}
    del decoder
    log("transparent decode measured")

    heads, tokens = 10, args.prior_tokens
    q = torch.randn(1, tokens, heads * 64, device=device, dtype=dtype)
    k = torch.randn(1, tokens, heads * 64, device=device, dtype=dtype)
    base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    with meter() as m:
        priors.structure_prior(q, k, heads)
    timings["prior"] = {"seconds": m.seconds, "peak_bytes": None if m.peak is None else m.peak - base,
                        "full_matrix_bytes": heads * tokens * tokens * torch.finfo(dtype).bits // 8, "tokens": tokens}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU"
    return {
        "device": name, "torch": torch.__version__, "arch": args.arch, "dtype": str(dtype).removeprefix("torch."),
        "latent": args.latent, "image": args.latent * 8, "steps": args.steps, "repeats": args.repeats, "lora_rank": args.rank,
        "decode_size": args.decode_size,
        "build_seconds": build_seconds, "total_seconds": time.perf_counter() - started, "cases": timings,
    }


def ratio(a, b):
    return None if a is None or not b else a / b


def table(results: dict) -> list[tuple[str, str, str, str]]:
    c = results["cases"]
    rows = [
        ("LayerFusion step time / limit (3 streams, FG LoRA, no blend; in turns)",
         ratio(c["fusion"]["seconds_per_step"], c["limit"]["seconds_per_step"]), TARGETS["step"]),
        ("LayerFusion peak GPU memory / limit", ratio(c["fusion"]["peak_bytes"], c["limit"]["peak_bytes"]), TARGETS["peak"]),
        ("run-time FG LoRA step time / LoRA merged into the weights (all rows)",
         ratio(c["limit"]["seconds_per_step"], c["merged"]["seconds_per_step"]), None),
        ("run-time FG LoRA peak GPU memory / LoRA merged into the weights",
         ratio(c["limit"]["peak_bytes"], c["merged"]["peak_bytes"]), None),
        ("one LayerFusion run (prior pass) / sequential route, time", ratio(c["fusion_prior_pass"]["seconds"], c["sequential"]["seconds"]), None),
        ("one LayerFusion run (prior pass) / sequential route, peak GPU memory",
         ratio(c["fusion_prior_pass"]["peak_bytes"], c["sequential"]["peak_bytes"]), None),
        (f"transparent decode at {results['decode_size']}px, 8 passes batched / one by one",
         ratio(c["decode_batched"]["seconds"], c["decode_loop"]["seconds"]), TARGETS["decode"]),
        (f"structure prior at {c['prior']['tokens']} tokens: peak / one heads x M x M matrix",
         ratio(c["prior"]["peak_bytes"], c["prior"]["full_matrix_bytes"]), 1.0),
    ]
    out = []
    for name, value, target in rows:
        shown = "n/a" if value is None else f"{value:.3f}"
        if target is None or value is None:
            met = ""
        else:
            met = "yes" if (value < target if target == 1.0 else value <= target) else "NO"
        out.append((name, shown, "" if target is None else (f"< {target:.2f}" if target == 1.0 else f"<= {target:.2f}"), met))
    return out


def markdown(results: dict) -> str:
    head = (f"Measured {time.strftime('%Y-%m-%d')} on {results['device']} (torch {results['torch']}, {results['arch']} "
            f"{results['dtype']}, {results['image']}x{results['image']}, {results['steps']} steps; "
            f"{results['total_seconds']:.0f} s in all).")
    lines = [head, "", "| measure | value | target | met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in table(results)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--arch", default="sdxl", help="sdxl: SDXL's own width and depth; depth1/full: the tiny test models")
    parser.add_argument("--latent", type=int, default=128, help="latent side (128: 1024x1024 images)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per case; the fastest counts")
    parser.add_argument("--rank", type=int, default=256, help="the attention LoRA stand-in's rank (LayerDiffuse's file: 256)")
    parser.add_argument("--decode-size", type=int, default=1024)
    parser.add_argument("--prior-tokens", type=int, default=4096, help="64x64 tokens: SDXL's last block at 1024x1024")
    parser.add_argument("--out", type=Path, required=True, help="folder for bench_gpu.json (created)")
    args = parser.parse_args(argv)
    results = run(args)
    text = markdown(results)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_gpu.json").write_text(json.dumps({**results, "table": table(results)}, indent=1) + "\n")
    (args.out / "bench_gpu.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
