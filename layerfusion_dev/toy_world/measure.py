"""LayerFusion on against blending off in the toy world: the method's claims (a)-(f), measured.

Each case is a seeded prompt triple (a foreground, a background, their composite) sampled twice from
the same noise by ComfyUI's own sampler with the pack's own nodes: once with LayerFusion Apply as set,
once with its three blends switched off (independent streams). Claims, per case:

(a) ``prompt``: the foreground's object has the prompted colour and the background stream the prompted
    background colour (1 or 0);
(b) ``blend_iou``: the composite's object (pixels near the object colour) against the foreground's
    alpha > 0.5 (IoU);
(c) ``mask_iou``: the hard mask (> 0.5) against the foreground's alpha > 0.5 (IoU);
(d) ``bg_object``: share of the background stream's pixels that have the object's colour (lower is better);
(e) ``outside`` / ``inside``: mean |composite - background| outside the object (alpha < 0.1), and
    mean |composite - object colour| inside it (alpha > 0.5) (lower is better);
(f) ``alpha_iou``: soft IoU of the alpha with the foreground's own object pixels (its colour over grey).

    python -m layerfusion_dev.toy_world.measure [--seeds 16] [--steps 20] [--out bench/toy_world]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from ..paths import REPO
from ..testnodes import toy_models
from . import pixels, scenes
from .pixels import checker, has_colour, iou, near, save_grid

log = logging.getLogger("layerfusion.toy_world")
CLAIMS = ("prompt", "blend_iou", "mask_iou", "bg_object", "outside", "inside", "alpha_iou")
DIAGNOSTICS = ("structure_iou",)  # the structure prior's top (the alpha's area) against alpha > 0.5
BETTER_LOW = {"bg_object", "outside", "inside"}
SIZE = 256


@dataclasses.dataclass(frozen=True)
class Case:
    seed: int
    colour: str
    shape: str
    bg_colour: str
    pattern: str

    @property
    def prompts(self) -> tuple[str, str, str]:
        fg = f"a {self.colour} {self.shape}"
        bg = scenes.background_prompt(self.bg_colour, self.pattern)
        return fg, bg, f"{fg} on {bg}"


FIRST_SEED = 1000


def cases(count: int, seed: int = FIRST_SEED) -> list[Case]:
    specs = scenes.draw_specs(count, torch.Generator().manual_seed(seed))
    return [Case(seed + i, s.colour, s.shape, s.bg_colour, s.pattern) for i, s in enumerate(specs)]


@dataclasses.dataclass
class Run:
    fg_rgba: torch.Tensor  # [H, W, 4]
    fg_rgb: torch.Tensor  # [H, W, 3]: the VAE decode (object over grey)
    bg: torch.Tensor  # [H, W, 3]
    blend: torch.Tensor  # [H, W, 3]
    structure: torch.Tensor | None  # [H, W]
    soft: torch.Tensor | None
    hard: torch.Tensor | None
    record: Any = None  # the run's MaskRecord (LayerFusion on)


class Toy:
    """The toy checkpoint and foreground LoRA, loaded once, with the pack's nodes."""

    def __init__(self, checkpoint: Path | None = None, lora: Path | None = None) -> None:
        from ..pack import import_pack

        self.pack = import_pack()
        from layerfusion.layerfusion_core.layout.rows import Branch
        from layerfusion.layerfusion_core.patching.branch_lora import apply_branch_lora
        from layerfusion.layerfusion_core.patching.model_info import unet_shapes
        from layerfusion.layerfusion_core.weights.lora_files import load_lora

        self.model, self.clip, self.vae = toy_models.load_checkpoint(checkpoint or toy_models.FILES / toy_models.CHECKPOINT)
        loaded = load_lora(str(lora or toy_models.FILES / toy_models.FG_LORA), self.model.model, unet_shapes(self.model))
        self.fg_model = apply_branch_lora(self.model, loaded, Branch.FG, 1.0)

    @torch.no_grad()
    def run(self, case: Case, settings: dict[str, Any], *, steps: int, cfg: float, blend: bool) -> Run:
        import comfy.sample

        from layerfusion.layerfusion_core.fusion import mask_pictures
        from layerfusion.layerfusion_core.patching.layerfusion import fusion_patch
        from layerfusion.nodes.fusion import LayerFusionApply, LayerFusionConditioning
        from layerfusion.nodes.latent import LayerFusionEmptyLatent

        fg, bg, blend_prompt = case.prompts
        positive, negative = LayerFusionConditioning.execute(self.clip, fg, bg, blend_prompt, "").result
        latent = LayerFusionEmptyLatent.execute(width=SIZE, height=SIZE, sets=1).result[0]
        switches = {} if blend else {"blend_blend": False, "blend_fg": False, "blend_bg": False}
        model = LayerFusionApply.execute(self.fg_model, **{**settings, **switches}).result[0]
        noise = comfy.sample.prepare_noise(latent["samples"], case.seed)
        samples = comfy.sample.sample(model, noise, steps, cfg, "dpmpp_2m", "karras", positive, negative, latent["samples"],
                                      seed=case.seed, disable_pbar=True)
        pictures = self.vae.decode(samples)
        rgba = toy_models.transparent_decode(samples[0:1], pictures[0:1])[0]
        patch = fusion_patch(model)
        structure = soft = hard = None
        if blend:
            structure, soft, hard = (m[0] for m in mask_pictures.maps(patch.records.record, patch.settings.structure_block, -1,
                                                                       patch.settings.d, (SIZE, SIZE)))
        return Run(rgba, pictures[0], pictures[1], pictures[2], structure, soft, hard, patch.records.record if blend else None)


def claims(case: Case, run: Run) -> dict[str, float]:
    colour = scenes.OBJECT_COLOURS[case.colour]
    alpha = run.fg_rgba[..., 3]
    obj = alpha > 0.5
    fg_colour_ok = has_colour(run.fg_rgba, colour)
    base = scenes.BACKGROUND_COLOURS[case.bg_colour]
    light = tuple(c + (1 - c) * 0.45 for c in base)
    bg_share = (near(run.bg, base, 0.2) | near(run.bg, light, 0.2)).float().mean().item()
    blend_obj = near(run.blend, colour, 0.25)
    fg_obj = near(run.fg_rgb, colour, 0.25).float()
    outside = alpha < 0.1
    out = {
        "prompt": float(fg_colour_ok and bg_share > 0.5),
        "blend_iou": iou(blend_obj, obj),
        "mask_iou": iou(run.hard > 0.5, obj) if run.hard is not None else float("nan"),
        "bg_object": near(run.bg, colour, 0.25).float().mean().item(),
        "outside": (run.blend - run.bg).abs().mean(-1)[outside].mean().item() if outside.any() else float("nan"),
        "inside": (run.blend - torch.tensor(colour)).abs().mean(-1)[obj].mean().item() if obj.any() else float("nan"),
        "alpha_iou": (torch.minimum(alpha, fg_obj).sum() / torch.maximum(alpha, fg_obj).sum().clamp(min=1e-6)).item(),
        "structure_iou": _top_iou(run.structure, obj) if run.structure is not None else float("nan"),
    }
    return out


def _top_iou(values: torch.Tensor, obj: torch.Tensor) -> float:
    """IoU with ``obj`` of the ``obj.sum()`` pixels where ``values`` is highest."""
    count = int(obj.sum())
    if count == 0:
        return float("nan")
    threshold = values.flatten().topk(count).values[-1]
    return iou(values >= threshold, obj)


def block_report(case_runs: list[tuple[Case, Run]]) -> dict[str, dict[str, float]]:
    """Per transformer block, at the extraction step (the first joint step at or after it), over the
    cases: the soft mask's IoU with alpha > 0.5 (its top area, so the threshold does not decide), and its mean."""
    from layerfusion.layerfusion_core.fusion import mask_pictures

    per_block: dict[str, list[dict[str, float]]] = {}
    for _case, run in case_runs:
        record = run.record
        obj = run.fg_rgba[..., 3] > 0.5
        for block in sorted({key for key, _ in record.soft}):
            _, soft, _ = mask_pictures.maps(record, block, -1, 10.0, tuple(obj.shape))
            per_block.setdefault(" ".join(map(str, block)), []).append({"soft_top_iou": _top_iou(soft[0], obj),
                                                                         "soft_mean": soft[0].mean().item()})
    return {block: {name: mean for name, (mean, _sd) in summarise(rows, ("soft_top_iou", "soft_mean")).items()}
            for block, rows in per_block.items()}  # NaN where no case had an object (alpha > 0.5)


def summarise(rows: list[dict[str, float]], names: tuple[str, ...] = (*CLAIMS, *DIAGNOSTICS)) -> dict[str, tuple[float, float]]:
    return pixels.summarise(rows, names)


def table(on: dict[str, tuple[float, float]], off: dict[str, tuple[float, float]], count: int) -> str:
    lines = [f"| claim ({count} seeds, mean ± sd) | LayerFusion on | blending off | better |", "|---|---|---|---|"]
    for claim in CLAIMS:
        (m_on, s_on), (m_off, s_off) = on[claim], off[claim]
        if m_off != m_off:
            better = "n/a"
        elif abs(m_on - m_off) < 5e-4:
            better = "same"
        else:
            better = "on" if ((m_on < m_off) if claim in BETTER_LOW else (m_on > m_off)) else "off"
        lines.append(f"| {claim} | {m_on:.3f} ± {s_on:.3f} | {m_off:.3f} ± {s_off:.3f} | {better} |")
    return "\n".join(lines)


def picture(runs: list[tuple[Run, Run]], path: Path) -> None:
    """Rows: one case; columns (on): fg over a checkerboard, bg, blend, hard mask; then the same off."""
    rows = []
    for on, off in runs:
        mask = on.hard.unsqueeze(-1).expand(-1, -1, 3) if on.hard is not None else torch.zeros_like(on.bg)
        rows.append([checker(on.fg_rgba), on.bg, on.blend, mask, checker(off.fg_rgba), off.bg, off.blend])
    save_grid(rows, path)


def measure(toy: Toy, count: int, steps: int, cfg: float, settings: dict[str, Any], picture_path: Path | None = None,
            on_case=None, first_seed: int = FIRST_SEED) -> dict[str, Any]:
    on_rows, off_rows, shown, on_runs = [], [], [], []
    drawn = cases(count, first_seed)
    for case in drawn:
        on = toy.run(case, settings, steps=steps, cfg=cfg, blend=True)
        off = toy.run(case, settings, steps=steps, cfg=cfg, blend=False)
        on_rows.append(claims(case, on))
        off_rows.append(claims(case, off))
        on_runs.append((case, on))
        if len(shown) < 6:
            shown.append((on, off))
        if on_case is not None:
            on_case(case, on_rows[-1], off_rows[-1])
    if picture_path is not None:
        picture(shown, picture_path)
    return {"cases": [dataclasses.asdict(c) for c in drawn], "on": on_rows, "off": off_rows,
            "summary_on": summarise(on_rows), "summary_off": summarise(off_rows), "blocks": block_report(on_runs)}


def case_arguments(doc: str | None, out: Path) -> argparse.ArgumentParser:
    """A measurement's command line: the cases (``--seeds``, ``--first-seed``), the sampling (``--steps``,
    ``--cfg``), the folder it writes (``--out``) and the files it measures (``--checkpoint``, ``--lora``: an
    experiment's LoRA, say)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--first-seed", type=int, default=FIRST_SEED, help="another value draws other cases (held out)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--checkpoint", type=Path, default=toy_models.FILES / toy_models.CHECKPOINT)
    parser.add_argument("--lora", type=Path, default=toy_models.FILES / toy_models.FG_LORA)
    return parser


def files_record(checkpoint: Path, lora: Path) -> dict[str, str]:
    """Which files a measurement ran on (names and the start of their SHA-256), for its results.json."""
    import hashlib

    return {kind: f"{path.name} {hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"
            for kind, path in (("checkpoint", checkpoint), ("lora", lora))}


def start_host() -> None:
    """Warnings only on the console, and ComfyUI importable on the CPU."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from ..host import import_comfy

    import_comfy(cpu=True)


DEFAULTS = {"d": 10.0, "prior_at": 0.8, "prior_mode": "prior_pass", "blend_start": 0.0, "blend_end": 1.0, "bg_mode": "bg_from_bl",
            "blend_blend": True, "blend_fg": True, "blend_bg": True, "norm_quantile": 1.0}


def main(argv: list[str] | None = None) -> int:
    parser = case_arguments(__doc__, REPO / "bench" / "toy_world")
    parser.add_argument("--toy-settings", action="store_true",
                        help=f"start from the toy model's own LayerFusion Apply inputs ({toy_models.APPLY_SETTINGS}) instead of the defaults")
    parser.add_argument("--set", action="append", default=[], help="a LayerFusion Apply input, e.g. --set prior_at=0.5")
    args = parser.parse_args(argv)
    start_host()
    settings = {**DEFAULTS, **(toy_models.APPLY_SETTINGS if args.toy_settings else {})}
    for item in args.set:
        key, value = item.split("=", 1)
        settings[key] = type(DEFAULTS[key])(value) if key in DEFAULTS and not isinstance(DEFAULTS[key], bool) else value == "True" if key in DEFAULTS else value
    toy = Toy(args.checkpoint, args.lora)
    from tqdm import tqdm

    bar = tqdm(total=args.seeds, desc="toy world: measure", unit="seed")
    result = measure(toy, args.seeds, args.steps, args.cfg, settings, args.out / "on_off.png", lambda *_: bar.update(),
                     args.first_seed)
    bar.close()
    result["settings"] = settings
    result["files"] = files_record(args.checkpoint, args.lora)
    result["steps"], result["cfg"], result["first_seed"] = args.steps, args.cfg, args.first_seed
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    text = table(result["summary_on"], result["summary_off"], args.seeds)
    (args.out / "table.md").write_text(text + "\n")
    lines = [text, "structure prior top-area IoU with the object (on): {:.3f} ± {:.3f}".format(*result["summary_on"]["structure_iou"])]
    for block, values in result["blocks"].items():
        lines.append(f"  soft mask at the extraction step, {block}: top-area IoU {values['soft_top_iou']:.3f}, mean {values['soft_mean']:.3f}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
