"""`make demo`: run the shipped LayerFusion workflow end to end on a real, headless ComfyUI.

By default on the toy world (layerfusion_dev/toy_world: a tiny SDXL-architecture model trained on
this machine on synthetic layered scenes, its files in the repository), so the pictures show real
shapes: the foreground's RGBA, the background, the composite, the masks and the layered file (PSD and
ORA). With real weights (``--checkpoint`` or ``--models``, or $LAYERFUSION_CHECKPOINT /
$LAYERFUSION_MODELS: an SDXL checkpoint and LayerDiffuse's files in a ComfyUI models folder) it runs
the same workflow on them; ``--tiny`` runs it on the random-weight test model. Then the
own-background workflow (LayerFusion Background): on the toy world with one of the world's own
background pictures as the photo, on real weights with ``--photo`` (skipped without it). Outputs are
PNGs (and the layered files) under ./output (or --output); their paths are printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from layerfusion_dev.comfy_server import ComfyServer, ServerError  # noqa: E402
from layerfusion_dev.paths import REPO, comfyui_dir  # noqa: E402
from layerfusion_dev.testnodes.toy_models import APPLY_SETTINGS as TOY_APPLY  # noqa: E402
from layerfusion_dev.testnodes.toy_models import CHECKPOINT as TOY_CHECKPOINT  # noqa: E402
from layerfusion_dev.testnodes.toy_models import FG_LORA as TOY_LORA  # noqa: E402
from layerfusion_dev.testnodes.toy_models import FILES as TOY_FILES  # noqa: E402
from layerfusion_dev.testnodes.toy_models import HOLD_SETTINGS as TOY_HOLD  # noqa: E402
from layerfusion_dev.workflows import layer_model_files, load_api, on_tiny_model, on_toy_model, output_paths, with_checkpoint  # noqa: E402

WORKFLOW = "layerfusion"
LAYERED_WORKFLOW = "layerfusion_layered_file"
PHOTO_WORKFLOW = "layerfusion_own_background"
PHOTO_NAME = "photo.png"  # the own-background workflow's Load Image
TOY_PHOTO = ("blue", "stripes")  # the toy prompts' background (workflows.TOY_PROMPTS), as the photo
CHECKPOINT_SUFFIXES = (".safetensors", ".sft")


def say(text: str, error: bool = False) -> None:
    """One line of the demo's report: to stdout (what it did, the files it wrote) or stderr (why it stopped)."""
    (sys.stderr if error else sys.stdout).write(text + "\n")


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


def write_photo(path: Path, source: Path | None, toy: bool) -> None:
    """The own-background workflow's photo: ``source`` when given, else the toy world's background
    picture of its prompts (toy) or a random picture (tiny model)."""
    import numpy as np
    from PIL import Image

    if source is not None:
        shutil.copyfile(source, path)
        return
    if toy:
        from layerfusion_dev.toy_world import scenes

        pixels = (scenes.background(*TOY_PHOTO).movedim(0, -1).numpy() * 255).round().astype(np.uint8)
    else:
        pixels = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path)


def photo_graph(checkpoint: str | None, tiny: bool) -> dict:
    graph = load_api(PHOTO_WORKFLOW)
    if checkpoint:
        return with_checkpoint(graph, checkpoint)
    if tiny:
        return on_tiny_model(graph)
    graph = on_toy_model(graph, lora_name=TOY_LORA, apply=TOY_APPLY)
    for node in graph.values():
        if node["class_type"] == "LayerFusionBackground":
            node["inputs"].update(TOY_HOLD)
    return graph


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=os.environ.get("LAYERFUSION_MODELS"),
                        help="a ComfyUI models folder with checkpoints/ (and layer_model/); default: $LAYERFUSION_MODELS")
    parser.add_argument("--checkpoint", default=os.environ.get("LAYERFUSION_CHECKPOINT"),
                        help="SDXL checkpoint name in checkpoints/ (default: $LAYERFUSION_CHECKPOINT, else the first one)")
    parser.add_argument("--output", type=Path, default=REPO / "output", help="where the PNGs go (default ./output)")
    parser.add_argument("--tiny", action="store_true", help="use the tiny random-weight test model (its pictures are noise)")
    parser.add_argument("--photo", type=Path, default=None,
                        help="your photo for the own-background workflow (needed on real weights; the toy world has its own)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")

    models_dirs = [p for p in (args.models, comfyui_dir() / "models") if p is not None]
    wants_real = not args.tiny and (args.models is not None or args.checkpoint is not None)
    checkpoint = find_checkpoint(models_dirs, args.checkpoint) if wants_real else None
    if wants_real and checkpoint is None:
        searched = ", ".join(str(p / "checkpoints") for p in models_dirs)
        say(f"demo: no SDXL checkpoint {args.checkpoint or ''} in {searched}", error=True)
        return 1
    graph = load_api(WORKFLOW)
    graph["layers"] = load_api(LAYERED_WORKFLOW)["layers"]  # the layered file too (same node ids)
    toy = not checkpoint and not args.tiny
    if checkpoint:
        say(f"demo: real weights, checkpoint {checkpoint}")
        graph = with_checkpoint(graph, checkpoint)
    elif args.tiny:
        say("demo: the tiny random-weight model (its images are noise)")
        graph = on_tiny_model(graph)
    else:
        if not (TOY_FILES / TOY_CHECKPOINT).is_file():
            say(f"demo: the toy world's files are missing in {TOY_FILES}: run `make toy-world`", error=True)
            return 1
        say("demo: the toy world (a tiny SDXL-architecture model trained here); on real SDXL weights: "
            "make demo DEMO_ARGS='--models <ComfyUI>/models --checkpoint <sdxl>.safetensors'")
        graph = on_toy_model(graph, lora_name=TOY_LORA, apply=TOY_APPLY)

    needed = layer_model_files(graph)
    if checkpoint:
        missing = [name for name in needed if not any((m / "layer_model" / name).is_file() for m in models_dirs)]
        if missing:
            say(f"demo: missing LayerDiffuse files in <models>/layer_model/: {', '.join(missing)}; download them from "
                "https://huggingface.co/LayerDiffusion/layerdiffusion-v1 (or run with --tiny)", error=True)
            return 1
    args.output.mkdir(parents=True, exist_ok=True)
    started, wall_start = time.monotonic(), time.time()
    server = ComfyServer(test_nodes=not checkpoint, models_dirs=models_dirs if checkpoint else [], output_dir=args.output)
    try:
        if args.tiny:
            write_tiny_standins(server.models_dir / "layer_model")
        elif toy:
            (server.models_dir / "layer_model").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(TOY_FILES / TOY_LORA, server.models_dir / "layer_model" / TOY_LORA)
        with server:
            outputs = server.run(graph, timeout=3600)
            if checkpoint and args.photo is None:
                say("demo: the own-background workflow needs --photo <picture> on real weights; skipped")
            else:
                write_photo(server.base / "input" / PHOTO_NAME, args.photo, toy)
                outputs.update({f"photo_{k}": v for k, v in server.run(photo_graph(checkpoint, args.tiny), timeout=3600).items()})
    except ServerError as err:
        say(f"demo: failed: {err}", error=True)
        return 1
    paths = output_paths(outputs, args.output)
    paths += sorted(p for p in args.output.rglob("*layers_*") if p.suffix in (".psd", ".ora") and p.stat().st_mtime >= wall_start)
    if not paths:
        say("demo: the workflow finished but saved no image", error=True)
        return 1
    say(f"demo: done in {time.monotonic() - started:.0f}s; wrote:")
    for path in paths:
        say(f"  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
