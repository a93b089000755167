"""Tiny random-weight models of the real SDXL architecture, built in code (no download).

The UNet is ComfyUI's own SDXL model class (`comfy.supported_models.SDXL` -> `model_base.SDXL`)
at a small width: the `depth1` variant keeps one transformer block per SDXL stage (11 blocks,
fast); the `full` variant keeps SDXL's exact transformer depths, so it has the 70 real transformer
block keys (input 4, 5, 7, 8; middle 0; output 0-5). The text encoder is ComfyUI's SDXL CLIP
(CLIP-L + CLIP-G with the real tokenizer) and the VAE ComfyUI's AutoencoderKL, both narrowed.
Weights are drawn from one seeded generator, so the same seed gives the same model everywhere.

Import this only where ComfyUI is importable (a running host, or a test that set it up).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

VARIANTS = ("depth1", "full")  # the test loader node's choices
BENCH_VARIANT = "sdxl"  # SDXL's own width and depth (2.6B parameters): for the benchmark only

MODEL_CHANNELS = 64  # SDXL: 320
CLIP_L_WIDTH = 64  # SDXL: 768
CLIP_G_WIDTH = 64  # SDXL: 1280 (also the pooled width)
SIZE_EMBEDDINGS = 6 * 256  # SDXL's six size/crop conditioning embeddings


@dataclasses.dataclass(frozen=True)
class TinySDXL:
    model: Any  # comfy.model_patcher.ModelPatcher
    clip: Any  # comfy.sd.CLIP
    vae: Any  # comfy.sd.VAE


def unet_config(variant: str = "depth1") -> dict[str, Any]:
    """ComfyUI's SDXL UNet config at tiny width; ``full`` keeps SDXL's transformer depths."""
    if variant == BENCH_VARIANT:
        return {**unet_config("full"), "model_channels": 320, "context_dim": 2048, "adm_in_channels": 2816}
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "full":
        depth, middle, output = [0, 0, 2, 2, 10, 10], 10, [0, 0, 0, 2, 2, 2, 10, 10, 10]
    else:
        depth, middle, output = [0, 0, 1, 1, 1, 1], 1, [0, 0, 0, 1, 1, 1, 1, 1, 1]
    return {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "num_classes": "sequential", "adm_in_channels": CLIP_G_WIDTH + SIZE_EMBEDDINGS,
        "in_channels": 4, "model_channels": MODEL_CHANNELS, "num_res_blocks": [2, 2, 2],
        "transformer_depth": depth, "channel_mult": [1, 2, 4], "transformer_depth_middle": middle,
        "use_linear_in_transformer": True, "context_dim": CLIP_L_WIDTH + CLIP_G_WIDTH, "num_head_channels": 64,
        "transformer_depth_output": output, "use_temporal_attention": False, "use_temporal_resblock": False,
    }


def seeded_init_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every parameter from one generator seeded with ``seed`` (in name order): matrices and
    kernels ~ N(0, 1/fan_in), norm weights 1, biases ~ N(0, 0.02^2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(module.named_parameters(), key=lambda item: item[0]):
            if param.ndim >= 2:
                fan_in = param[0].numel()
                value = torch.randn(param.shape, generator=gen) / fan_in**0.5
            elif name.endswith("bias"):
                value = torch.randn(param.shape, generator=gen) * 0.02
            else:
                value = torch.ones(param.shape)
            param.copy_(value.to(param.dtype))
    return module


def build_unet(variant: str = "depth1", seed: int = 0, operations=None, dtype: torch.dtype = torch.float32):
    """A ComfyUI ModelPatcher around a tiny ``model_base.SDXL`` (eps-prediction, weights in ``dtype``,
    fp32 unless told), its layers from ``operations`` (a comfy.ops class; ComfyUI's own choice when None)."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    model_config = comfy.supported_models.SDXL(unet_config(variant))
    model_config.set_inference_dtype(dtype, None)
    model_config.custom_operations = operations
    model = model_config.get_model({}, device="cpu")
    seeded_init_(model.diffusion_model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def build_sd15_unet(seed: int = 0):
    """A ModelPatcher around a tiny ``model_base.BaseModel`` of the SD1.5 architecture (768-wide
    text context, no pooled embedding): the model LayerFusion must refuse."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    config = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
              "adm_in_channels": None, "in_channels": 4, "model_channels": 32, "num_res_blocks": [1, 1],
              "transformer_depth": [1, 1], "channel_mult": [1, 2], "transformer_depth_middle": 1,
              "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 2, "num_head_channels": -1,
              "transformer_depth_output": [1, 1, 1, 1], "use_temporal_attention": False, "use_temporal_resblock": False}
    model_config = comfy.supported_models.SD15(config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device="cpu")
    seeded_init_(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def _clip_config(width: int, projection: bool) -> dict[str, Any]:
    config = {"num_hidden_layers": 3, "hidden_size": width, "num_attention_heads": 2, "intermediate_size": 2 * width}
    if projection:
        config["projection_dim"] = width
    return config


def build_clip(seed: int = 0):
    """ComfyUI's SDXL CLIP (real tokenizer, CLIP-L + CLIP-G) with three narrow layers each (it reads the penultimate)."""
    import comfy.sd
    import comfy.sdxl_clip
    import comfy.supported_models_base

    target = comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
    options = {
        "clip_l_model_config": _clip_config(CLIP_L_WIDTH, projection=False),
        "clip_g_model_config": _clip_config(CLIP_G_WIDTH, projection=True),
        "dtype": torch.float32,
    }
    clip = comfy.sd.CLIP(target=target, model_options=options)
    seeded_init_(clip.cond_stage_model, seed + 1)
    return clip


VAE_DDCONFIG: dict[str, Any] = {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
    "ch_mult": [1, 2, 4, 4], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
}


SDXL_VAE_DDCONFIG: dict[str, Any] = {**VAE_DDCONFIG, "ch": 128, "num_res_blocks": 2}  # the real SDXL VAE's layout


def build_vae(seed: int = 0, full_width: bool = False):
    """ComfyUI's AutoencoderKL (8x down, 4 latent channels, like SDXL's VAE) at width 32, or at
    SDXL's own width and depth (83M parameters) with ``full_width``."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    params = {"ddconfig": dict(SDXL_VAE_DDCONFIG if full_width else VAE_DDCONFIG), "embed_dim": 4}
    state_dict = seeded_init_(AutoencoderKL(**params), seed + 2).state_dict()
    return comfy.sd.VAE(sd=state_dict, config={"params": params}, dtype=torch.float32)


def build(variant: str = "depth1", seed: int = 0) -> TinySDXL:
    return TinySDXL(model=build_unet(variant, seed), clip=build_clip(seed), vae=build_vae(seed))
