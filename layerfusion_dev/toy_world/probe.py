"""Where the toy model's attention puts LayerFusion's priors: per transformer block and noise level.

For foregrounds of the world (the object over grey, or the transparent latent with the LoRA merged), noised to
each sigma and passed once through the UNet with their own prompt, per block:

- ``c``: the content prior (head-averaged cross-attention to the prompt's EOS token): the IoU of its top
  object-area tokens with the object (alpha > 0.5 on the block's grid; chance is about the object's area), and
  its mean (the EOS token's share of the attention);
- ``s``: the structure prior ``s' = 1 - norm(1 / sum_j m_ij^2)`` of the block's self-attention, the same IoU.

    python -m layerfusion_dev.toy_world.probe [--checkpoint F] [--lora F | --no-lora] [--count 8]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from pathlib import Path

import torch

from ..testnodes import toy_models as models
from . import scenes

log = logging.getLogger("layerfusion.toy_world")
SIGMAS = (0.8, 2.0, 5.0, 14.6)  # 5.0 is about 0.8T on SDXL's schedule


def block_name(path: str) -> str:
    """``input_blocks.4.1.transformer_blocks.0.attn2`` -> ``input 4 0``."""
    parts = path.split(".")
    where = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}[parts[0]]
    index = "0" if where == "middle" else parts[1]
    return f"{where} {index} {parts[parts.index('transformer_blocks') + 1]}"


def merge_lora(unet: torch.nn.Module, path: Path) -> None:
    """Add a LayerDiffuse-layout LoRA (``::lora::0`` up, ``::1`` down) into the UNet's weights, in place."""
    import safetensors.torch

    tensors = safetensors.torch.load_file(str(path))
    modules = dict(unet.named_modules())
    for key, up in tensors.items():
        if key.endswith("::lora::0"):
            name = key[len("diffusion_model."):-len(".weight::lora::0")]
            down = tensors[key[:-1] + "1"]
            modules[name].weight.data += up.float() @ down.float()


def _top_iou(values: torch.Tensor, obj: torch.Tensor) -> float:
    count = int(obj.sum())
    if count == 0:
        return float("nan")
    top = values >= values.topk(count).values[-1]
    return ((top & obj).sum() / (top | obj).sum()).item()


@torch.no_grad()
def probe(model, clip, transparent: bool, count: int = 8, seed: int = 2000) -> dict[tuple[str, float], dict[str, float]]:
    """``{(block, sigma): {"c_iou", "c_mean", "s_iou"}}`` averaged over ``count`` foregrounds."""
    from layerfusion.layerfusion_core.fusion.priors import content_confidence, structure_prior

    specs = scenes.draw_specs(count, torch.Generator().manual_seed(seed))
    rendered = scenes.render(specs)
    alpha = rendered.fg[:, 3:]
    if transparent:
        x0 = models.transparent_latent(rendered.fg)
    else:
        x0 = models.model_latent(rendered.fg[:, :3] * alpha + models.NEUTRAL * (1 - alpha))
    encoded = models.encode_prompts(clip, [s.fg_prompt for s in specs])
    context = torch.stack([encoded[s.fg_prompt][0] for s in specs])
    y = torch.stack([model.model.encode_adm(pooled_output=encoded[s.fg_prompt][1][None])[0] for s in specs])
    end = clip.tokenizer.clip_g.end_token
    eos = [[t[0] for t in clip.tokenize(s.fg_prompt)["g"][0]].index(end) for s in specs]
    unet = model.model.diffusion_model
    captured: dict[str, dict[str, torch.Tensor]] = {}

    def hook(name):
        def pre(module, args, kwargs):
            x = args[0]
            context_ = kwargs.get("context")
            source = x if context_ is None else context_
            captured.setdefault(block_name(name), {})[name.rsplit(".", 1)[-1]] = (module.to_q(x), module.to_k(source), module.heads)
        return pre

    handles = [m.register_forward_pre_hook(hook(n), with_kwargs=True) for n, m in unet.named_modules()
               if n.endswith((".attn1", ".attn2")) and ".transformer_blocks." in n]
    out: dict[tuple[str, float], dict[str, float]] = {}
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=gen)
    try:
        for sigma in SIGMAS:
            captured.clear()
            model.model.apply_model(x0 + sigma * noise, torch.full((count,), sigma), c_crossattn=context, y=y)
            for block, parts in captured.items():
                q1, k1, heads1 = parts["attn1"]
                q2, k2, heads2 = parts["attn2"]
                side = int(q1.shape[1] ** 0.5)
                obj = (torch.nn.functional.adaptive_avg_pool2d(alpha, side) > 0.5).flatten(1)
                s = structure_prior(q1, k1, heads1)
                rows = {"c_iou": [], "c_mean": [], "s_iou": []}
                for i in range(count):
                    c = content_confidence(q2[i:i + 1], k2[i:i + 1], heads2, eos[i])[0]
                    rows["c_iou"].append(_top_iou(c, obj[i]))
                    rows["c_mean"].append(c.mean().item())
                    rows["s_iou"].append(_top_iou(s[i], obj[i]))
                out[(block, sigma)] = {k: statistics.fmean(v for v in vs if v == v) for k, vs in rows.items()}
    finally:
        for handle in handles:
            handle.remove()
    return out


def report(result: dict[tuple[str, float], dict[str, float]]) -> str:
    blocks = sorted({b for b, _ in result}, key=lambda b: ({"input": 0, "middle": 1, "output": 2}[b.split()[0]],
                                                           int(b.split()[1]), int(b.split()[2])))
    head = " | ".join(f"sigma {s}: c IoU / EOS share / s IoU" for s in SIGMAS)
    lines = [f"| block | {head} |", "|---" * (len(SIGMAS) + 1) + "|"]
    for block in blocks:
        cells = [f"{result[(block, s)]['c_iou']:.2f} / {result[(block, s)]['c_mean']:.3f} / {result[(block, s)]['s_iou']:.2f}"
                 for s in SIGMAS]
        lines.append(f"| {block} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=models.FILES / models.CHECKPOINT)
    parser.add_argument("--lora", type=Path, default=models.FILES / models.FG_LORA)
    parser.add_argument("--no-lora", action="store_true", help="the base model on the object over grey")
    parser.add_argument("--count", type=int, default=8)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from ..host import import_comfy
    from ..pack import import_pack

    import_comfy(cpu=True)
    import_pack()
    model, clip, _vae = models.load_checkpoint(args.checkpoint)
    if not args.no_lora:
        merge_lora(model.model.diffusion_model, args.lora)
    sys.stdout.write(report(probe(model, clip, transparent=not args.no_lora, count=args.count)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
