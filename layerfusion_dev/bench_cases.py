"""The benchmark's cases, shared by both benchmarks (their table of ratios and targets: `bench_table`):
`make bench` (`layerfusion_dev.bench`: the CPU, a process per case) and `make bench-gpu`
(`layerfusion_dev.bench_gpu`: CUDA, one process). Each of them keeps only its own way of measuring.

The cases (each measured for ``seconds`` and memory):

- ``limit``: the LayerFusion batch (three streams, ``enable_layered_batch``) with the FG-row LoRA
  and no blending, the fastest LayerFusion could be;
- ``fusion``: LayerFusion on the limit (content prior read in the run, at every block);
- ``merged``: the same batch with the LoRA merged into the weights by ComfyUI's own weight patch
  (every row): the reference for the run-time LoRA, not the pack's former 'merged copy' mode (gone);
- ``fusion_prior_pass``: one LayerFusion run with its default settings (the prior pass);
- ``sequential``: LayerDiffuse's sequential route to the same three images (foreground, fg2ble,
  fgble2bg), three runs of one row;
- ``decode_batched``, ``decode_loop``, ``decode_off``: Transparent Decode's 8 augmentations 8 at a
  time, one at a time, and augmentation off;
- ``prior``: the structure prior at SDXL's last block (``prior_tokens`` tokens, 10 heads);
- ``limit_k1`` .. ``limit_k4`` and ``fusion_k1`` .. ``fusion_k4`` (`FOREGROUND_CASES`): a layered set
  of K foregrounds (K + 2 rows, ``[fg_1..fg_K, bg, blend]``): the limit of that set (its rows given
  to the FG-row LoRA as a LayerFusion run gives them, no blending) and LayerFusion on it, timed in
  turns (``foregrounds``) for the cost of each foreground added to a set (`added`).

The builders import ComfyUI and the pack when called: put ComfyUI on the path first
(`layerfusion_dev.host.import_comfy`), which decides whether it runs on the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from layerfusion_dev.pack import import_pack  # the pack as the package `layerfusion` (cheap: its root imports nothing heavy)

if TYPE_CHECKING:
    import torch

SAMPLING_CASES = ("limit", "fusion", "merged", "fusion_prior_pass", "sequential")
IN_TURNS = ("limit", "fusion", "merged")  # timed in turns (limit, fusion, merged, limit, ...): a shared machine's drift falls on all
DECODE_CASES = ("decode_batched", "decode_loop", "decode_off")
PRIOR_CASE = "prior"
PRIOR_HEADS = 10  # SDXL's last block
FOREGROUNDS = (1, 2, 3, 4)  # K of the several-foreground cases: 1 to Layout's MAX_FOREGROUNDS
FOREGROUNDS_GROUP = "foregrounds"  # the several-foreground cases, timed in turns in one process


def foreground_case(kind: str, foregrounds: int) -> str:
    """The case of ``kind`` ("limit" or "fusion") on a set of ``foregrounds`` foregrounds: "fusion_k2"."""
    return f"{kind}_k{foregrounds}"


FOREGROUND_CASES = tuple(foreground_case(kind, k) for k in FOREGROUNDS for kind in ("limit", "fusion"))  # their turns' order


@dataclasses.dataclass(frozen=True)
class Size:
    """How big each case is: the UNet (``arch``: tiny_sdxl's ``sdxl``, ``depth1`` or ``full``), the
    latent side, steps, timed repeats (the fastest counts), the LoRA stand-in's rank, the decoded
    image's side and the structure prior's tokens."""

    arch: str
    latent: int
    steps: int
    repeats: int
    rank: int
    decode_size: int
    prior_tokens: int


SIZE_HELP = {
    "latent": "latent side (128: 1024x1024 images)",
    "steps": "sampling steps per run",
    "repeats": "timed repeats per case; the fastest counts",
    "rank": "the attention LoRA stand-in's rank (LayerDiffuse's file: 256)",
    "decode_size": "side of the image Transparent Decode decodes",
    "prior_tokens": "the structure prior's tokens (4096 = 64x64: SDXL's last block at 1024x1024)",
}


def add_size_arguments(parser: argparse.ArgumentParser, *defaults: Size) -> None:
    """``--latent``, ``--steps``, ... (each `Size` field but the arch); unset ones keep the arch's default."""
    for field, text in SIZE_HELP.items():
        values = {getattr(size, field) for size in defaults}
        shown = values.pop() if len(values) == 1 else ", ".join(f"{getattr(size, field)} ({size.arch})" for size in defaults)
        parser.add_argument("--" + field.replace("_", "-"), type=int, help=f"{text}; default: {shown}")


def size_from_args(args: argparse.Namespace, default: Size) -> Size:
    return dataclasses.replace(default, **{f: getattr(args, f) for f in SIZE_HELP if getattr(args, f) is not None})


def size_arguments(size: Size) -> list[str]:
    """The command line that gives `size_from_args` this ``size`` back."""
    return [item for f in SIZE_HELP for item in ("--" + f.replace("_", "-"), str(getattr(size, f)))]


# ---- sampling -------------------------------------------------------------------------------------
class Run(NamedTuple):
    model: Any  # a ComfyUI ModelPatcher
    rows: int
    positive: list
    negative: list


class Sampling:
    """One UNet of ``size.arch`` (random weights, ``dtype``), the attention-LoRA stand-in, the
    prompts, and the runs of every sampling case on them."""

    def __init__(self, size: Size, dtype: torch.dtype | None = None) -> None:
        import torch

        import_pack()
        from layerfusion.layerfusion_core.weights import lora_files
        from layerfusion_dev.testnodes import standins, tiny_sdxl

        self.size, self.dtype = size, dtype or torch.float32
        self.unet = tiny_sdxl.build_unet(size.arch, seed=0, dtype=self.dtype)
        self.shapes = standins.unet_shapes(self.unet)
        self.lora = lora_files.load_frozen(standins.ATTN_FILE, standins.attn_lora_standin(self.shapes, rank=size.rank), self.shapes)
        config = tiny_sdxl.unet_config(size.arch)
        self.ctx, self.pooled = config["context_dim"], config["adm_in_channels"] - tiny_sdxl.SIZE_EMBEDDINGS

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.unet.model.parameters())

    def conds(self, rows: int, seed: int, foregrounds: int = 1) -> list:
        """Random prompts for ``rows`` rows, marked as LayerFusion Conditioning's of ``foregrounds`` foregrounds."""
        import torch

        gen = torch.Generator().manual_seed(seed)
        eos = 5 if foregrounds == 1 else tuple(range(5, 5 + foregrounds))  # each foreground prompt's EOS token
        return [[torch.randn(rows, 77, self.ctx, generator=gen).to(self.dtype),
                 {"pooled_output": torch.randn(rows, self.pooled, generator=gen).to(self.dtype), "layerfusion_eos": eos}]]

    @functools.cached_property
    def limit(self):
        from layerfusion.layerfusion_core.layout.rows import Branch
        from layerfusion.layerfusion_core.patching.branch_lora import apply_branch_lora
        from layerfusion.layerfusion_core.patching.calls import enable_layered_batch

        return apply_branch_lora(enable_layered_batch(self.unet), self.lora, Branch.FG, 1.0)

    def layered_limit(self, foregrounds: int):
        """The limit for sets of ``foregrounds`` foregrounds: outside a LayerFusion run a layered batch
        has one foreground per set, so a handler (``RUN_OPTION``, as a run's) gives each UNet call the
        rows of that layout, and the FG-row LoRA its K rows per set; nothing else runs."""
        from layerfusion.layerfusion_core.layout.streams import Layout
        from layerfusion.layerfusion_core.patching.options import RUN_OPTION, set_transformer_option

        model = self.limit.clone()
        set_transformer_option(model, RUN_OPTION, functools.partial(_layered_call, Layout(foregrounds)))
        return model

    def _model(self, case: str):
        import comfy.weight_adapter

        from layerfusion.layerfusion_core.fusion.settings import FusionSettings, PriorMode
        from layerfusion.layerfusion_core.patching.calls import enable_layered_batch
        from layerfusion.layerfusion_core.patching.layerfusion import apply_layerfusion

        if case == "limit":
            return self.limit
        if case == "fusion":
            return apply_layerfusion(self.limit, FusionSettings(prior_mode=PriorMode.IN_RUN, prior_at=1.0))
        if case == "fusion_prior_pass":
            return apply_layerfusion(self.limit, FusionSettings())
        if case == "merged":
            merged = self.unet.clone()
            merged.add_patches({f"{p}.weight": comfy.weight_adapter.LoRAAdapter(set(), (f.up, f.down, None, None, None, None))
                                for p, f in self.lora.low_rank.items()}, 1.0)
            return enable_layered_batch(merged)
        raise ValueError(f"not a one-model sampling case: {case!r}")

    def runs(self, case: str) -> list[Run]:
        """What ``case`` samples: one run of three rows (K + 2 for a `FOREGROUND_CASES` case), or the
        sequential route's three runs of one."""
        if case in FOREGROUND_CASES:
            kind, k = case.rsplit("_k", 1)
            foregrounds = int(k)
            rows = foregrounds + 2
            model = self.layered_limit(foregrounds) if kind == "limit" else self._model(kind)
            return [Run(model, rows, self.conds(rows, 2, foregrounds), self.conds(rows, 3, foregrounds))]
        if case != "sequential":
            return [Run(self._model(case), 3, self.conds(3, 2), self.conds(3, 3))]
        import torch

        from layerfusion.layerfusion_core.layout.rows import Branch
        from layerfusion.layerfusion_core.patching.branch_lora import apply_branch_lora
        from layerfusion.layerfusion_core.patching.layerdiffuse_conditional import layerdiffuse_conditional
        from layerfusion.layerfusion_core.weights import lora_files
        from layerfusion_dev.testnodes import standins

        pos, neg = self.conds(1, 2), self.conds(1, 3)
        runs = [Run(apply_branch_lora(self.unet, self.lora, Branch.FG, 1.0), 1, pos, neg)]
        for conditions in (1, 2):  # fg2ble (from the foreground), fgble2bg (from both)
            tensors = standins.conditional_standin(self.shapes, conditions, rank=self.size.rank)
            cond_lora = lora_files.load_frozen("cond.safetensors", tensors, self.shapes, allow_widened_input=True)
            latents = [torch.randn(1, 4, self.size.latent, self.size.latent) for _ in range(conditions)]
            model, positive, negative = layerdiffuse_conditional(self.unet, pos, neg, latents, cond_lora, 1.0, 1.0)
            runs.append(Run(model, 1, positive, negative))
        return runs

    def sampler(self, run: Run, steps: int | None = None) -> Callable[[], None]:
        """Loads ``run``'s model (ComfyUI's weight patching included) now, untimed, and returns the
        sampling itself, to be timed."""
        import comfy.model_management
        import comfy.sample
        import torch

        noise = torch.randn(run.rows, 4, self.size.latent, self.size.latent, generator=torch.Generator().manual_seed(1))
        comfy.model_management.load_models_gpu([run.model])
        return lambda: comfy.sample.sample(run.model, noise, steps or self.size.steps, 5.0, "euler", "normal", run.positive,
                                           run.negative, torch.zeros_like(noise), seed=0, disable_pbar=True)


def _layered_call(layout, executor, args, transformer_options: dict, kwargs: dict):
    """`Sampling.layered_limit`'s handler: the UNet call with the rows of ``layout``."""
    from layerfusion.layerfusion_core.patching.calls import call_rows, run_call

    return run_call(executor, call_rows(args[0], transformer_options, layout), args, transformer_options, kwargs)


# ---- Transparent Decode and the structure prior ----------------------------------------------------
class Decoding:
    """LayerDiffuse's transparent decoder (stand-in weights) and an image of ``size`` to decode."""

    def __init__(self, size: int, device: torch.device, dtype: torch.dtype) -> None:
        import torch

        import_pack()
        from layerfusion.layerfusion_core.transparency.networks import TransparentDecoder
        from layerfusion_dev.testnodes import standins

        decoder = TransparentDecoder().eval()
        decoder.load_state_dict({k: v.float() for k, v in standins.exact_standin(standins.DECODER_FILE).items()})
        self.decoder = decoder.to(device=device, dtype=dtype)
        gen = torch.Generator().manual_seed(0)
        self.pixels = torch.rand(1, 3, size, size, generator=gen).to(device=device, dtype=dtype)
        self.latent = torch.randn(1, 4, size // 8, size // 8, generator=gen).to(device=device, dtype=dtype)

    def decoding(self, case: str) -> Callable[[], torch.Tensor]:
        """One decode of ``case`` (one of `DECODE_CASES`), under inference mode."""
        import torch

        from layerfusion.layerfusion_core.transparency import codec
        from layerfusion.layerfusion_core.transparency.networks import SIZE_MULTIPLE

        variants, sub_batch = {"decode_batched": (codec.AUGMENTATIONS, 8), "decode_loop": (codec.AUGMENTATIONS, 1),
                               "decode_off": (codec.IDENTITY, 8)}[case]

        def decode() -> torch.Tensor:
            with torch.inference_mode():
                return codec.decode_rgba(self.decoder, self.pixels, self.latent, size_multiple=SIZE_MULTIPLE,
                                         augmentations=variants, sub_batch=sub_batch)

        return decode


def prior_case(tokens: int, device: torch.device, dtype: torch.dtype) -> tuple[Callable[[], Any], int]:
    """The structure prior's call at ``tokens`` tokens and `PRIOR_HEADS` heads, and the bytes of one
    heads x M x M matrix (what it must stay under)."""
    import torch

    import_pack()
    from layerfusion.layerfusion_core.fusion import priors

    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, tokens, PRIOR_HEADS * 64, generator=gen).to(device=device, dtype=dtype) for _ in range(2))
    return (lambda: priors.structure_prior(q, k, PRIOR_HEADS)), PRIOR_HEADS * tokens * tokens * torch.finfo(dtype).bits // 8
