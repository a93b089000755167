"""`make demo`: run the shipped LayerFusion workflow end to end on a real, headless ComfyUI.

With real weights (an SDXL checkpoint in a models folder given by --models or LAYERFUSION_MODELS,
or in the host's own models/), it uses them. Without any, it says so in one line and runs the same
graph on the tiny random-weight SDXL model, so that every node of the pipeline runs (its pictures
are noise). Outputs are PNGs under ./output (or --output); their paths are printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from layerfusion_dev.comfy_server import ComfyServer, ServerError  # noqa: E402
from layerfusion_dev.paths import REPO, comfyui_dir  # noqa: E402
from layerfusion_dev.workflows import layer_model_files, load_api, on_tiny_model, output_paths, with_checkpoint  # noqa: E402

WORKFLOW = "layerfusion"
CHECKPOINT_SUFFIXES = (".safetensors", ".sft")


def find_checkpoint(models_dirs: list[Path], wanted: str | None) -> str | None:
    """The checkpoint to use (a name relative to a checkpoints/ folder), or None."""
    for models in models_dirs:
        folder = models / "checkpoints"
        if not folder.is_dir():
            continue
        if wanted:
            if (folder / wanted).is_file():
                return wanted
            continue
        found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix in CHECKPOINT_SUFFIXES)
        if found:
            return found[0]
    return None


def write_tiny_standins(folder: Path) -> None:
    """Random LayerDiffuse-format files that fit the tiny model (the real ones fit only real SDXL)."""
    from layerfusion_dev.host import import_comfy

    import_comfy()
    from layerfusion_dev.testnodes import standins, tiny_sdxl

    standins.write_standins(folder, standins.unet_shapes(tiny_sdxl.build_unet("depth1", 0)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=os.environ.get("LAYERFUSION_MODELS"),
                        help="a ComfyUI models folder with checkpoints/ (and layer_model/); default: $LAYERFUSION_MODELS")
    parser.add_argument("--checkpoint", default=os.environ.get("LAYERFUSION_CHECKPOINT"),
                        help="SDXL checkpoint name in checkpoints/ (default: $LAYERFUSION_CHECKPOINT, else the first one)")
    parser.add_argument("--output", type=Path, default=REPO / "output", help="where the PNGs go (default ./output)")
    parser.add_argument("--tiny", action="store_true", help="use the tiny random-weight model even when weights exist")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")

    models_dirs = [p for p in (args.models, comfyui_dir() / "models") if p is not None]
    checkpoint = None if args.tiny else find_checkpoint(models_dirs, args.checkpoint)
    if args.checkpoint and not args.tiny and checkpoint is None:
        searched = ", ".join(str(p / "checkpoints") for p in models_dirs)
        print(f"demo: checkpoint {args.checkpoint!r} is not in {searched}", file=sys.stderr)
        return 1
    graph = load_api(WORKFLOW)
    if checkpoint:
        print(f"demo: real weights, checkpoint {checkpoint}")
        graph = with_checkpoint(graph, checkpoint)
    else:
        searched = ", ".join(str(p / "checkpoints") for p in models_dirs)
        print(f"demo: no SDXL checkpoint found ({searched}); running the same graph on the tiny random-weight model (its images are noise)")
        graph = on_tiny_model(graph)

    needed = layer_model_files(graph)
    if checkpoint:
        missing = [name for name in needed if not any((m / "layer_model" / name).is_file() for m in models_dirs)]
        if missing:
            print(f"demo: missing LayerDiffuse files in <models>/layer_model/: {', '.join(missing)}; download them from "
                  "https://huggingface.co/LayerDiffusion/layerdiffusion-v1 (or run with --tiny)", file=sys.stderr)
            return 1
    args.output.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    server = ComfyServer(test_nodes=not checkpoint, models_dirs=models_dirs, output_dir=args.output)
    try:
        if not checkpoint:
            write_tiny_standins(server.models_dir / "layer_model")
        with server:
            outputs = server.run(graph, timeout=3600)
    except ServerError as err:
        print(f"demo: failed: {err}", file=sys.stderr)
        return 1
    paths = output_paths(outputs, args.output)
    if not paths:
        print("demo: the workflow finished but saved no image", file=sys.stderr)
        return 1
    print(f"demo: done in {time.monotonic() - started:.0f}s; wrote:")
    for path in paths:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
