"""`make toy-world`: train the toy world's files on this machine (seeded, resumable, with a progress bar).

Stages, each resumable from its last saved state (in .cache/toy_world/, safetensors only):
1. ``scenes``: render the training scenes once and keep their latents (the VAE is exact: no training);
2. ``base``: the UNet, v-prediction, on backgrounds, composites and objects over grey, prompts dropped
   10 % of the time (for guidance);
3. ``fg``: the foreground LoRA (LayerDiffuse's attention layout, rank `LORA_RANK`) on the frozen base:
   foreground prompt -> the transparent latent (object over grey + alpha in channel 3).
Then the files are written to layerfusion_dev/toy_world/files/ (fp16) with their hashes.

    python -m layerfusion_dev.toy_world.train [--seed 0] [--base-steps N] [--fg-steps N] [--fresh]

For experiments on the foreground LoRA (about 7 minutes instead of 45): ``--base-from <a toy checkpoint>``
skips the base stage and trains only the LoRA on that file's UNet (fp16 weights, so not the bytes
`make toy-world` gives), written alone to ``--out``; ``--fg-lr``, ``--fg-alpha-weight`` (the alpha
channel's share of the loss) and ``--fg-seed`` (the LoRA's own start and draws) set the LoRA stage.
``--scenes`` and ``--cache`` are for the tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import torch

from ..paths import REPO
from ..testnodes import toy_models as models
from . import scenes, states
from .lora import LoRA

log = logging.getLogger("layerfusion.toy_world")
CACHE = REPO / ".cache" / "toy_world"
SCENES = 4096
BATCH = 32
BASE_STEPS = 640
FG_STEPS = 240
LORA_RANK = 16
BASE_LR = 1e-3
FG_LR = 3e-3
SAVE_EVERY = 50
DROP_PROMPT = 0.1
ROLES = (("fg_grey", 0.25), ("bg", 0.35), ("blend", 0.40))  # base stage: what each sample shows


@dataclasses.dataclass
class World:
    """Latents of the training scenes (model space) and their prompts."""
    fg_grey: torch.Tensor  # the object over grey, as an ordinary picture (channel 3 zero)
    fg: torch.Tensor  # the transparent latent
    bg: torch.Tensor
    blend: torch.Tensor
    fg_prompts: list[str]
    bg_prompts: list[str]
    blend_prompts: list[str]


def build_world(seed: int, count: int = SCENES, cache: Path = CACHE) -> World:
    source = hashlib.sha256(Path(scenes.__file__).read_bytes() + Path(models.__file__).read_bytes()).hexdigest()[:12]
    path = cache / f"scenes_{seed}_{count}_{source}.safetensors"  # a change to the world or the latents renders anew
    specs = scenes.draw_specs(count, torch.Generator().manual_seed(seed))
    if not path.is_file():
        import safetensors.torch

        parts: dict[str, list[torch.Tensor]] = {"fg_grey": [], "fg": [], "bg": [], "blend": []}
        from tqdm import tqdm

        for start in tqdm(range(0, count, 64), desc="toy world: scenes", unit="x64"):
            rendered = scenes.render(specs[start:start + 64])
            alpha = rendered.fg[:, 3:]
            parts["fg_grey"].append(models.model_latent(rendered.fg[:, :3] * alpha + models.NEUTRAL * (1 - alpha)))
            parts["fg"].append(models.transparent_latent(rendered.fg))
            parts["bg"].append(models.model_latent(rendered.bg))
            parts["blend"].append(models.model_latent(rendered.blend))
        path.parent.mkdir(parents=True, exist_ok=True)
        safetensors.torch.save_file({k: torch.cat(v).contiguous() for k, v in parts.items()}, str(path))
    import safetensors.torch

    tensors = safetensors.torch.load_file(str(path))
    return World(tensors["fg_grey"], tensors["fg"], tensors["bg"], tensors["blend"],
                 [s.fg_prompt for s in specs], [s.bg_prompt for s in specs], [s.blend_prompt for s in specs])


class Conditioner:
    """Prompt -> (context, y) exactly as ComfyUI builds them at sampling (CLIPTextEncode, SDXL's encode_adm)."""

    def __init__(self, model, clip) -> None:
        encoded = models.encode_prompts(clip, scenes.all_prompts())
        self.context = {p: c for p, (c, _) in encoded.items()}
        self.y = {p: model.model.encode_adm(pooled_output=pooled[None])[0].float() for p, (_, pooled) in encoded.items()}

    def fingerprint(self) -> torch.Tensor:
        """Every prompt's context and ``y``: what a saved state also depends on (the text encoder)."""
        return torch.cat([torch.stack([self.context[p] for p in sorted(self.context)]).flatten(),
                          torch.stack([self.y[p] for p in sorted(self.y)]).flatten()])

    def batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack([self.context[p] for p in prompts]), torch.stack([self.y[p] for p in prompts])


def v_loss(model, x0: torch.Tensor, context: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
           alpha_weight: float = 1.0) -> torch.Tensor:
    """The v-prediction loss, through ComfyUI's own `apply_model` (its input scaling and V_PREDICTION);
    ``alpha_weight`` scales latent channel 3's squared error (the foreground's alpha)."""
    sigmas = models.sigma_table(model)
    index = torch.randint(0, len(sigmas), (x0.shape[0],), generator=gen)
    sigma = sigmas[index]
    noise = torch.randn(x0.shape, generator=gen)
    noisy = x0 + noise * sigma.view(-1, 1, 1, 1)
    denoised = model.model.apply_model(noisy, sigma, c_crossattn=context, y=y)
    weight = (sigma**2 + 1) / sigma**2
    error = (denoised - x0) ** 2
    if alpha_weight != 1.0:
        error = error * torch.tensor([1.0, 1.0, 1.0, alpha_weight]).view(1, 4, 1, 1)
    return (error.mean(dim=(1, 2, 3)) * weight).mean()


def _step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{stage}:{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def base_batch(world: World, gen: torch.Generator) -> tuple[torch.Tensor, list[str]]:
    index = torch.randint(0, world.bg.shape[0], (BATCH,), generator=gen).tolist()
    pick = torch.rand(BATCH, generator=gen).tolist()
    drop = (torch.rand(BATCH, generator=gen) < DROP_PROMPT).tolist()
    flip = (torch.rand(BATCH, generator=gen) < 0.5).tolist()
    latents, prompts = [], []
    for i, p, d, f in zip(index, pick, drop, flip):
        role = "fg_grey" if p < ROLES[0][1] else ("bg" if p < ROLES[0][1] + ROLES[1][1] else "blend")
        latent = getattr(world, role)[i]
        latents.append(latent.flip(-1) if f else latent)
        prompt = {"fg_grey": world.fg_prompts, "bg": world.bg_prompts, "blend": world.blend_prompts}[role][i]
        prompts.append("" if d else prompt)
    return torch.stack(latents), prompts


def fg_batch(world: World, gen: torch.Generator) -> tuple[torch.Tensor, list[str]]:
    index = torch.randint(0, world.fg.shape[0], (BATCH,), generator=gen).tolist()
    drop = (torch.rand(BATCH, generator=gen) < DROP_PROMPT).tolist()
    flip = (torch.rand(BATCH, generator=gen) < 0.5).tolist()
    latents = [world.fg[i].flip(-1) if f else world.fg[i] for i, f in zip(index, flip)]
    return torch.stack(latents), ["" if d else world.fg_prompts[i] for i, d in zip(index, drop)]


def run_key(*parts: object) -> str:
    """What a saved training state belongs to: ``parts`` (the stage's data and settings)."""
    blob = b"".join(p.numpy().tobytes() if isinstance(p, torch.Tensor) else repr(p).encode() for p in parts)
    return hashlib.sha256(blob).hexdigest()[:12]


def train_stage(stage: str, params: dict[str, torch.nn.Parameter], loss_of, steps: int, seed: int, lr: float,
                key: str, cache: Path = CACHE) -> list[float]:
    from tqdm import tqdm

    optimizer = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=0.0)
    state_path = cache / f"{stage}_{seed}_{key}_state.safetensors"
    start = states.load(state_path, params, optimizer)
    losses = []
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=f"toy world: {stage}", unit="step")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * (0.5 * (1 + torch.cos(torch.tensor(step / steps * torch.pi))).item() * 0.9 + 0.1)
        loss = loss_of(_step_generator(seed, stage, step))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
        if (step + 1) % SAVE_EVERY == 0 or step + 1 == steps:
            states.save(state_path, params, optimizer, step + 1)
    return losses


def metadata(seed: int, base_steps: int, fg_steps: int, **experiment: object) -> dict[str, str]:
    """The files' metadata: one key (safetensors writes several keys in no fixed order, which would change the hashes);
    ``experiment``: what an experiment's LoRA changed (``make toy-world``'s own files have none)."""
    return {"toy_world": json.dumps({"seed": seed, "base_steps": base_steps, "fg_steps": fg_steps, "lora_rank": LORA_RANK,
                                     **experiment}, sort_keys=True)}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-steps", type=int, default=BASE_STEPS)
    parser.add_argument("--fg-steps", type=int, default=FG_STEPS)
    parser.add_argument("--out", type=Path, default=models.FILES)
    parser.add_argument("--fresh", action="store_true", help="forget saved training states and start over")
    parser.add_argument("--base-from", type=Path, help="a toy checkpoint: train only the foreground LoRA on its UNet")
    parser.add_argument("--fg-lr", type=float, default=FG_LR, help="the LoRA stage's learning rate")
    parser.add_argument("--fg-alpha-weight", type=float, default=1.0, help="the alpha channel's weight in the LoRA's loss")
    parser.add_argument("--fg-seed", type=int, help="the LoRA's own seed (its start and its draws; default --seed): "
                        "one LoRA setting trained with several is how its spread shows")
    parser.add_argument("--scenes", type=int, default=SCENES, help="how many training scenes")
    parser.add_argument("--cache", type=Path, default=CACHE, help="where the scenes and the saved states are kept")
    args = parser.parse_args(argv)
    args.fg_seed = args.seed if args.fg_seed is None else args.fg_seed
    if args.base_from is not None and not args.base_from.is_file():
        parser.error(f"--base-from: {args.base_from} is not a file (a toy checkpoint, e.g. {models.FILES / models.CHECKPOINT})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from ..host import import_comfy

    import_comfy(cpu=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.fresh:
        for seed in {args.seed, args.fg_seed}:
            for path in args.cache.glob(f"*_{seed}_*_state.safetensors"):
                path.unlink()
    started = time.monotonic()
    world = build_world(args.seed, args.scenes, args.cache)
    if args.base_from is None:
        model, clip, vae = models.build_unet(args.seed), models.build_clip(args.seed), models.build_vae()
    else:
        model, clip, vae = models.load_checkpoint(args.base_from)
    conditioner = Conditioner(model, clip)
    unet = model.model.diffusion_model
    unet.train()
    if args.base_from is None:
        base_key = train_base(args, world, model, conditioner)
    else:
        base_key = run_key("base-from", sha256(args.base_from))
    for p in unet.parameters():
        p.requires_grad_(False)
    lora = LoRA(unet, LORA_RANK, args.fg_seed)
    lora.attach()

    def fg_loss(gen: torch.Generator) -> torch.Tensor:
        latents, prompts = fg_batch(world, gen)
        return v_loss(model, latents, *conditioner.batch(prompts), gen, args.fg_alpha_weight)

    usual = {"fg_lr": FG_LR, "fg_alpha_weight": 1.0, "scenes": SCENES, "fg_seed": args.seed}
    experiment = {k: getattr(args, k) for k in usual if getattr(args, k) != usual[k]}
    train_stage("fg", {f"lora.{k}": p for k, p in lora.named_parameters()}, fg_loss, args.fg_steps, args.fg_seed, lr=args.fg_lr,
                key=run_key(base_key, world.fg, args.fg_steps, LORA_RANK, args.fg_lr, *experiment.items()), cache=args.cache)
    lora.detach()
    unet.eval()
    write_files(args, model, clip, vae, lora, experiment, started)
    return 0


def train_base(args: argparse.Namespace, world: World, model, conditioner: Conditioner) -> str:
    """The base stage (every UNet weight); returns its run key, which the LoRA stage's key builds on."""
    def base_loss(gen: torch.Generator) -> torch.Tensor:
        latents, prompts = base_batch(world, gen)
        return v_loss(model, latents, *conditioner.batch(prompts), gen)

    key = run_key(world.fg_grey, world.bg, world.blend, world.fg_prompts, world.bg_prompts, world.blend_prompts,
                  args.seed, args.base_steps, BATCH, ROLES, DROP_PROMPT, BASE_LR, models.unet_config(), conditioner.fingerprint())
    params = dict(model.model.diffusion_model.named_parameters())
    train_stage("base", params, base_loss, args.base_steps, args.seed, lr=BASE_LR, key=key, cache=args.cache)
    return key


def write_files(args: argparse.Namespace, model, clip, vae, lora: LoRA, experiment: dict[str, object], started: float) -> None:
    """The LoRA in ``args.out``, and (not with ``--base-from``) the checkpoint and both files' hashes."""
    import safetensors.torch

    args.out.mkdir(parents=True, exist_ok=True)
    lora_only = args.base_from is not None
    meta = metadata(args.seed, 0 if lora_only else args.base_steps, args.fg_steps, **experiment,
                    **({"base_from": args.base_from.name} if lora_only else {}))
    safetensors.torch.save_file(dict(sorted(lora.layerdiffuse_tensors().items())), str(args.out / models.FG_LORA), metadata=meta)
    names = [models.FG_LORA]
    if not lora_only:
        models.save_checkpoint(args.out / models.CHECKPOINT, model, clip, vae, meta)
        names = [models.CHECKPOINT, models.FG_LORA]
        hashes = {name: sha256(args.out / name) for name in names}
        (args.out / "hashes.json").write_text(json.dumps(hashes, indent=1) + "\n")
    log.info("toy world: wrote %s in %.0f s", ", ".join(f"{k} ({(args.out / k).stat().st_size / 1e6:.1f} MB)" for k in names),
             time.monotonic() - started)


if __name__ == "__main__":
    raise SystemExit(main())
