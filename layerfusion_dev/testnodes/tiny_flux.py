"""Tiny random-weight models of the real FLUX.1-dev architecture, built in code (no download).

The diffusion model is ComfyUI's own FLUX class (`comfy.supported_models.Flux` ->
`model_base.Flux`, guidance-distilled like dev) at a tiny width and depth; the text encoder is
ComfyUI's FLUX CLIP (CLIP-L + T5-XXL with the real tokenizers) with narrow layers; the VAE is
ComfyUI's KL autoencoder with FLUX's 16 latent channels and no quant convs (what ComfyUI builds
for ae.safetensors: an AutoencodingEngine with a Gaussian regulariser), at a small width.
Weights come from one seeded generator (`tiny_sdxl.seeded_init_`).

Import this only where ComfyUI is importable.
"""

from __future__ import annotations

from typing import Any

import torch

from .tiny_sdxl import seeded_init_

HIDDEN = 64  # FLUX.1: 3072
HEADS = 2  # FLUX.1: 24 (head dim 128 = sum of axes_dim)
CLIP_L_WIDTH = 64  # FLUX.1: 768 (the pooled vector)
T5_WIDTH = 64  # FLUX.1: 4096 (the context)
LATENT_CHANNELS = 16


def unet_config() -> dict[str, Any]:
    """ComfyUI's FLUX.1-dev config at tiny width and depth (one double and one single block)."""
    return {
        "image_model": "flux", "in_channels": LATENT_CHANNELS, "out_channels": LATENT_CHANNELS, "patch_size": 2,
        "vec_in_dim": CLIP_L_WIDTH, "context_in_dim": T5_WIDTH, "hidden_size": HIDDEN, "mlp_ratio": 4.0,
        "num_heads": HEADS, "depth": 1, "depth_single_blocks": 1, "axes_dim": [8, 12, 12], "theta": 10000,
        "qkv_bias": True, "guidance_embed": True,
    }


def build_model(seed: int = 0):
    """A ComfyUI ModelPatcher around a tiny ``model_base.Flux`` (fp32)."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    model_config = comfy.supported_models.Flux(unet_config())
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device="cpu")
    seeded_init_(model.diffusion_model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(
        model, load_device=comfy.model_management.get_torch_device(), offload_device=comfy.model_management.unet_offload_device(),
    )


def build_clip(seed: int = 0):
    """ComfyUI's FLUX CLIP (real CLIP-L and T5 tokenizers) with narrow layers."""
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.flux

    target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.flux.FluxTokenizer, comfy.text_encoders.flux.flux_clip())
    options = {
        "clip_l_model_config": {"num_hidden_layers": 2, "hidden_size": CLIP_L_WIDTH, "num_attention_heads": 2,
                                "intermediate_size": 2 * CLIP_L_WIDTH},
        "t5xxl_model_config": {"d_model": T5_WIDTH, "d_ff": 2 * T5_WIDTH, "d_kv": T5_WIDTH // 2, "num_heads": 2, "num_layers": 2},
        "dtype": torch.float32,
    }
    clip = comfy.sd.CLIP(target=target, model_options=options)
    seeded_init_(clip.cond_stage_model, seed + 1)
    return clip


VAE_DDCONFIG: dict[str, Any] = {
    "double_z": True, "z_channels": LATENT_CHANNELS, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
    "ch_mult": [1, 2, 4, 4], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
}


def build_vae(seed: int = 0):
    """A 16-channel VAE shaped like ComfyUI's FLUX VAE (AutoencodingEngine, Gaussian regulariser,
    no quant convs), 8x down, at width 32; ``latent_channels`` 16 like ae.safetensors."""
    import comfy.model_patcher
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL, AutoencodingEngine

    params = {"ddconfig": dict(VAE_DDCONFIG), "embed_dim": LATENT_CHANNELS}
    vae = comfy.sd.VAE(sd=seeded_init_(AutoencoderKL(**params), seed + 2).state_dict(), config={"params": params}, dtype=torch.float32)
    part = {"target": "comfy.ldm.modules.diffusionmodules.model.{}", "params": dict(VAE_DDCONFIG)}
    engine = AutoencodingEngine(
        regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
        encoder_config={**part, "target": part["target"].format("Encoder")},
        decoder_config={**part, "target": part["target"].format("Decoder")},
    )
    engine.load_state_dict({k: v for k, v in vae.first_stage_model.state_dict().items() if "quant_conv" not in k}, strict=True)
    engine.eval()
    vae.first_stage_model = engine  # what comfy.sd.VAE builds for ae.safetensors (no quant_conv)
    vae.patcher = comfy.model_patcher.ModelPatcher(engine, load_device=vae.device, offload_device=vae.patcher.offload_device)
    vae.latent_channels = LATENT_CHANNELS
    return vae
