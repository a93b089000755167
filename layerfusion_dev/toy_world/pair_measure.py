"""Two foregrounds in one run in the toy world (issue 26): blending off, LayerFusion on, LayerFusion on
with placement hints (the first object's box the left half, the second's the right half) weighting only
the structure priors (LayerFusion Placement's ``steer`` off), and the same hints steering the foregrounds
too (``steer`` on, the node's default).

Each case is the world's prompt triple with a second object of another colour and shape above the
first (``fg``: "a red circle", ``fg_2``: "a blue square", the blend prompt naming both), sampled by
ComfyUI's own sampler from the same noise four times. Per case and run, for object k = 1, 2:

- ``fg_colour``: whether foreground k has an object (alpha > 0.5) of its prompted colour, averaged over
  the two (0, 0.5 or 1): what steering costs the foregrounds, if anything;
- ``blend_iou``: the composite's object k (pixels near its colour) against foreground k's alpha > 0.5
  (IoU), averaged over the two objects: each object is put where its own foreground's is;
- ``fg_overlap``: IoU of the two foregrounds' objects (alpha > 0.5);
- ``mask_overlap``: IoU of the two hard masks (> 0.5) at the extraction step (runs that blend);
- ``in_place``: share of the composite's object pixels (both objects) inside their own hint's half.

    python -m layerfusion_dev.toy_world.pair_measure [--seeds 16] [--out bench/toy_world/pairs] [--kinds steer]

``--kinds`` runs only those; the other kinds' rows are kept from the folder's results.json (the same
cases, settings and noise: each run is deterministic).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from ..paths import REPO
from ..testnodes import toy_models
from . import scenes
from .measure import DEFAULTS, FIRST_SEED, SIZE, Case, Toy, case_arguments, cases, files_record, start_host
from .pixels import checker, has_colour, iou, near, save_grid, summarise

log = logging.getLogger("layerfusion.toy_world")
CLAIMS = ("fg_colour", "blend_iou", "fg_overlap", "mask_overlap", "in_place")
RUNS = ("off", "on", "hints", "steer")
TITLES = {"off": "blending off", "on": "LayerFusion on", "hints": "on, hints, steer off", "steer": "on, hints, steer on (default)"}
BOXES = "0 0 0.5 1\n0.5 0 1 1"  # LayerFusion Placement's boxes: fg left, fg_2 right
ALL_OFF = {"blend_blend": False, "blend_fg": False, "blend_bg": False}


@dataclasses.dataclass(frozen=True)
class PairCase:
    first: Case
    colour_2: str
    shape_2: str

    @property
    def prompts(self) -> tuple[str, str, str, str]:
        fg, bg, _ = self.first.prompts
        fg_2 = f"a {self.colour_2} {self.shape_2}"
        return fg, fg_2, bg, f"{fg} {fg_2} on {bg}"


def pair_cases(count: int, seed: int = FIRST_SEED) -> list[PairCase]:
    """The measure's cases, each with a second object: the next colour (not the first's) and the next shape."""
    colours, shapes = list(scenes.OBJECT_COLOURS), list(scenes.SHAPES)
    out = []
    for case in cases(count, seed):
        colour_2 = colours[(colours.index(case.colour) + 1 + case.seed % (len(colours) - 1)) % len(colours)]
        out.append(PairCase(case, colour_2, shapes[(shapes.index(case.shape) + 1) % len(shapes)]))
    return out


@dataclasses.dataclass
class PairRun:
    fg_rgba: torch.Tensor  # [2, H, W, 4]
    blend: torch.Tensor  # [H, W, 3]
    hard: torch.Tensor | None  # [2, H, W] at the extraction step


@torch.no_grad()
def run_pair(toy: Toy, case: PairCase, settings: dict[str, Any], kind: str, *, steps: int, cfg: float) -> PairRun:
    import comfy.sample

    from layerfusion.layerfusion_core.fusion import mask_pictures
    from layerfusion.layerfusion_core.patching.layerfusion import fusion_patch
    from layerfusion.nodes.fusion import LayerFusionApply, LayerFusionConditioning
    from layerfusion.nodes.latent import LayerFusionEmptyLatent
    from layerfusion.nodes.placement import LayerFusionPlacement

    fg, fg_2, bg, blend = case.prompts
    positive, negative = LayerFusionConditioning.execute(toy.clip, fg, bg, blend, "", fg_2=fg_2).result
    if kind in ("hints", "steer"):
        positive = LayerFusionPlacement.execute(positive, 1.0, BOXES, steer=kind == "steer").result[0]
    latent = LayerFusionEmptyLatent.execute(width=SIZE, height=SIZE, sets=1, foregrounds=2).result[0]
    model = LayerFusionApply.execute(toy.fg_model, **{**settings, **(ALL_OFF if kind == "off" else {})}).result[0]
    noise = comfy.sample.prepare_noise(latent["samples"], case.first.seed)
    samples = comfy.sample.sample(model, noise, steps, cfg, "dpmpp_2m", "karras", positive, negative, latent["samples"],
                                  seed=case.first.seed, disable_pbar=True)
    pictures = toy.vae.decode(samples)
    rgba = toy_models.transparent_decode(samples[0:2], pictures[0:2])
    hard = None
    if kind != "off":
        patch = fusion_patch(model)
        hard = mask_pictures.maps(patch.records.record, patch.settings.structure_block, -1, patch.settings.d, (SIZE, SIZE))[2]
    return PairRun(rgba, pictures[3], hard)


def pair_claims(case: PairCase, run: PairRun) -> dict[str, float]:
    objects = run.fg_rgba[..., 3] > 0.5
    colours = (scenes.OBJECT_COLOURS[case.first.colour], scenes.OBJECT_COLOURS[case.colour_2])
    in_composite = [near(run.blend, colour, 0.25) for colour in colours]
    halves = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    halves[0, :, : SIZE // 2], halves[1, :, SIZE // 2:] = True, True
    drawn = sum(int(c.sum()) for c in in_composite)
    return {
        "fg_colour": sum(has_colour(run.fg_rgba[k], colours[k]) for k in range(2)) / 2,
        "blend_iou": sum(iou(in_composite[k], objects[k]) for k in range(2)) / 2,
        "fg_overlap": iou(objects[0], objects[1]),
        "mask_overlap": iou(run.hard[0] > 0.5, run.hard[1] > 0.5) if run.hard is not None else float("nan"),
        "in_place": sum(int((in_composite[k] & halves[k]).sum()) for k in range(2)) / drawn if drawn else float("nan"),
    }


def picture(runs: list[dict[str, PairRun]], path: Path) -> None:
    """Rows: one case; per run (`RUNS` order): the two foregrounds over a checkerboard and the composite."""
    save_grid([[cell for kind in RUNS if kind in by_kind
                for cell in (checker(by_kind[kind].fg_rgba[0]), checker(by_kind[kind].fg_rgba[1]), by_kind[kind].blend)]
               for by_kind in runs], path)


def table(summaries: dict[str, dict[str, tuple[float, float]]], count: int) -> str:
    kinds = [kind for kind in RUNS if kind in summaries]
    lines = [f"| ({count} seeds, mean ± sd) | {' | '.join(TITLES[k] for k in kinds)} |", "|---|" + "---|" * len(kinds)]
    for claim in CLAIMS:
        cells = []
        for kind in kinds:
            mean, sd = summaries[kind][claim]
            cells.append("n/a" if mean != mean else f"{mean:.3f} ± {sd:.3f}")
        lines.append(f"| {claim} | {' | '.join(cells)} |")
    return "\n".join(lines)


def measure(toy: Toy, count: int, steps: int, cfg: float, settings: dict[str, Any], picture_path: Path | None = None,
            on_case=None, first_seed: int = FIRST_SEED, kinds: tuple[str, ...] = RUNS) -> dict[str, Any]:
    rows: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    shown = []
    drawn = pair_cases(count, first_seed)
    for case in drawn:
        by_kind = {kind: run_pair(toy, case, settings, kind, steps=steps, cfg=cfg) for kind in kinds}
        for kind, run in by_kind.items():
            rows[kind].append(pair_claims(case, run))
        if len(shown) < 6:
            shown.append(by_kind)
        if on_case is not None:
            on_case()
    if picture_path is not None:
        picture(shown, picture_path)
    return {"cases": [dataclasses.asdict(c) for c in drawn], "rows": rows,
            "summary": {kind: summarise(rows[kind], CLAIMS) for kind in kinds}}


def merged(result: dict[str, Any], earlier: dict[str, Any]) -> dict[str, Any]:
    """``result`` with the rows of the kinds it did not run taken from ``earlier`` (the same cases, settings and
    files; a results.json from before files were recorded was measured on the committed files)."""
    same = all(earlier.get(key) == result.get(key) for key in ("cases", "settings", "boxes", "steps", "cfg", "first_seed"))
    files = earlier.get("files") or files_record(toy_models.FILES / toy_models.CHECKPOINT, toy_models.FILES / toy_models.FG_LORA)
    if not same or files != result["files"]:
        raise ValueError("the folder's results.json was measured on other cases, settings or files: run every kind")
    rows = {**{k: v for k, v in earlier["rows"].items() if k not in result["rows"]}, **result["rows"]}
    return {**result, "rows": rows, "summary": {kind: summarise(rows[kind], CLAIMS) for kind in RUNS if kind in rows}}


def main(argv: list[str] | None = None) -> int:
    parser = case_arguments(__doc__, REPO / "bench" / "toy_world" / "pairs")
    parser.add_argument("--kinds", nargs="+", choices=RUNS, default=list(RUNS))
    args = parser.parse_args(argv)
    start_host()
    settings = {**DEFAULTS, **toy_models.APPLY_SETTINGS}
    toy = Toy(args.checkpoint, args.lora)
    from tqdm import tqdm

    bar = tqdm(total=args.seeds, desc="toy world: two foregrounds", unit="seed")
    kinds = tuple(kind for kind in RUNS if kind in args.kinds)
    picture_path = args.out / ("pairs.png" if kinds == RUNS else f"pairs_{'_'.join(kinds)}.png")
    result = measure(toy, args.seeds, args.steps, args.cfg, settings, picture_path, bar.update, args.first_seed, kinds)
    bar.close()
    result.update(settings=settings, boxes=BOXES, steps=args.steps, cfg=args.cfg, first_seed=args.first_seed,
                  files=files_record(args.checkpoint, args.lora))
    if kinds != RUNS and (args.out / "results.json").is_file():
        result = merged(result, json.loads((args.out / "results.json").read_text()))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    text = table(result["summary"], args.seeds)
    (args.out / "table.md").write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
