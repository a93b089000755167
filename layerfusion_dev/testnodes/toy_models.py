"""The toy world's models, built from ComfyUI's own classes, and its files.

- **UNet**: ComfyUI's SDXL model class (`comfy.supported_models.SDXL` -> `model_base.SDXL`), narrowed
  (width 32, levels 32/64/128 channels) with two transformer blocks per attention stage, so its block
  keys are SDXL's own up to the depth (the last self-attention block is ``output 5 1``, as in SDXL).
  v-prediction (a ``v_pred`` key in the checkpoint, which ComfyUI's SDXL config reads).
- **Text encoder**: ComfyUI's SDXL CLIP (real tokenizer) with hand-set weights. CLIP-G, width 64:
  token embeddings random N(0, 1), positions 0; its first layer lets every token attend to itself only
  (q = k = the token), except the end token, whose query is zero, so it averages the whole prompt:
  word tokens carry their own word, the padding (token 0) only itself, and the end token (EOS) and the
  pooled output the whole prompt, as EOS does in SDXL's CLIP. The other layers pass through. CLIP-L
  is all zeros (it carries nothing; the context is [CLIP-L, CLIP-G] as in SDXL).
- **VAE**: ComfyUI's TAESD class with hand-set weights, exact: the latent is the 8x8 average of the
  picture, ``2 * mean - 1`` in the model's space (after SDXL's 0.13025 scale) in channels 0-2 and 0 in
  channel 3; the decoder paints each latent pixel's colour over its 8x8 block (its first ReLU layer
  undoes TAESD's input clamp piecewise-linearly, to within 1e-3).
- **Transparency**: a foreground latent is the object over 50 % grey in channels 0-2 (what the VAE
  shows) and the alpha in channel 3 (0 where transparent, as in every ordinary latent: the LoRA only
  has to add the object's alpha); `transparent_decode` reads the alpha from channel 3.
  (The pack's Transparent Decode needs LayerDiffuse's decoder at its full size, 208 MB; a hand-set
  one of that layout would not fit the toy's size budget.)

ComfyUI's `CheckpointLoaderSimple` accepts SDXL only at SDXL's own width (its model table asks for
model_channels 320 and a 2048-wide context), so the toy checkpoint is opened by `load_checkpoint`:
ComfyUI's own detection of the UNet's config from the file, its SDXL model config (which reads
``v_pred``), its model, CLIP and VAE classes; only the table match is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

FILES = Path(__file__).resolve().parents[1] / "toy_world" / "files"  # the trained files (make toy-world)
CHECKPOINT = "toy_world.safetensors"
FG_LORA = "toy_world_fg_attn.safetensors"  # LayerDiffuse's attention-LoRA layout, for LayerFusion LoRA Apply
# LayerFusion Apply's inputs for this model, chosen on the first 8 cases of `make toy-measure` (README): its structure
# prior is on the object only late (sigma ~0.8), a few bright border tokens set the soft mask's max, and the
# background kept pure is what keeps it free of the object
APPLY_SETTINGS = {"prior_at": 0.3, "norm_quantile": 0.8, "bg_mode": "bl_from_bg"}
# LayerFusion Background's band at the toy's 256 px (SDXL's defaults, 64 and 32 px, are made for 1024 px):
# room for the world's shadow (12 px down and right, blurred over ~16 px)
HOLD_SETTINGS = {"dilate_px": 32, "feather_px": 16}
NEUTRAL = 0.5  # the grey a foreground latent shows around its object
LATENT_SCALE = 0.13025  # SDXL's latent scale (comfy.latent_formats.SDXL)
MODEL_CHANNELS = 32
CLIP_G_WIDTH = 64
CLIP_L_WIDTH = 8
SIZE_EMBEDDINGS = 6 * 256
QK_GAIN = 1.5  # self-attention logits ~ QK_GAIN^2 * sqrt(64) for a token with itself, ~ +-QK_GAIN^2 with others
DECODER_KNOTS = 21  # per colour channel, in the decoder's first layer (3 * 21 <= 64 channels)


def unet_config() -> dict[str, Any]:
    """What ComfyUI's detection reads back from the file (plus SDXL's own num_head_channels 64)."""
    return {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "num_classes": "sequential", "adm_in_channels": CLIP_G_WIDTH + SIZE_EMBEDDINGS,
        "in_channels": 4, "model_channels": MODEL_CHANNELS, "num_res_blocks": [2, 2, 2],
        "transformer_depth": [0, 0, 2, 2, 2, 2], "channel_mult": [1, 2, 4], "transformer_depth_middle": 2,
        "use_linear_in_transformer": True, "context_dim": CLIP_L_WIDTH + CLIP_G_WIDTH,
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 2, 2, 2], "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }


def build_unet(seed: int, v_prediction: bool = True):
    """A fresh (randomly initialised by ComfyUI's layers' own init) toy UNet as a ModelPatcher."""
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SDXL(unet_config())
    config.set_inference_dtype(torch.float32, None)
    model_type = comfy.model_base.ModelType.V_PREDICTION if v_prediction else comfy.model_base.ModelType.EPS
    model = comfy.model_base.SDXL(config, model_type=model_type, device="cpu")
    torch.manual_seed(seed)
    with torch.no_grad():  # ComfyUI's layers skip their init (weights come from files): torch's own init here
        for module in model.diffusion_model.modules():
            for base in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm):
                if isinstance(module, base):
                    base.reset_parameters(module)
        for param in model.diffusion_model.out[-1].parameters():
            param.zero_()
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def _clip_options() -> dict[str, Any]:
    def config(width: int, projection: bool) -> dict[str, Any]:
        out = {"num_hidden_layers": 3, "hidden_size": width, "num_attention_heads": 1, "intermediate_size": width}
        if projection:
            out["projection_dim"] = width
        return out

    return {"clip_l_model_config": config(CLIP_L_WIDTH, False), "clip_g_model_config": config(CLIP_G_WIDTH, True),
            "dtype": torch.float32}


def _clip_target():
    import comfy.sdxl_clip
    import comfy.supported_models_base

    return comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)


def build_clip(seed: int):
    """ComfyUI's SDXL CLIP with the hand-set weights described above."""
    import comfy.sd

    clip = comfy.sd.CLIP(target=_clip_target(), model_options=_clip_options())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in clip.cond_stage_model.parameters():
            param.zero_()
        g = clip.cond_stage_model.clip_g.transformer.text_model
        g.embeddings.token_embedding.weight.copy_(torch.randn(g.embeddings.token_embedding.weight.shape, generator=gen))
        eos = clip.tokenizer.clip_g.end_token
        layer_norm = torch.nn.functional.layer_norm
        eos_direction = layer_norm(g.embeddings.token_embedding.weight[eos], (CLIP_G_WIDTH,))
        eos_direction = eos_direction / eos_direction.norm()
        eye = torch.eye(CLIP_G_WIDTH)
        for layer in g.encoder.layers:
            layer.layer_norm1.weight.fill_(1.0)
            layer.layer_norm2.weight.fill_(1.0)
        first = g.encoder.layers[0].self_attn
        first.q_proj.weight.copy_(QK_GAIN * (eye - torch.outer(eos_direction, eos_direction)))
        first.k_proj.weight.copy_(QK_GAIN * eye)
        first.v_proj.weight.copy_(eye)
        first.out_proj.weight.copy_(eye)
        g.final_layer_norm.weight.fill_(1.0)
        clip.cond_stage_model.clip_g.transformer.text_projection.weight.copy_(eye)
        clip_l = clip.cond_stage_model.clip_l.transformer.text_model
        for layer in clip_l.encoder.layers:
            layer.layer_norm1.weight.fill_(1.0)
            layer.layer_norm2.weight.fill_(1.0)
        clip_l.final_layer_norm.weight.fill_(1.0)
    return clip


def _taesd_state_dict() -> dict[str, torch.Tensor]:
    """The exact TAESD described above (8x8 mean pool encoder; block-painting decoder)."""
    from comfy.taesd.taesd import TAESD, Block

    vae = TAESD(latent_channels=4)
    with torch.no_grad():
        for param in vae.parameters():
            param.zero_()
        enc, dec = vae.taesd_encoder, vae.taesd_decoder
        convs = [m for m in enc if isinstance(m, torch.nn.Conv2d)]  # first, three stride-2, last
        for c in range(3):
            convs[0].weight[c, c, 1, 1] = 1.0
            for pool in convs[1:4]:
                pool.weight[c, c, 1:3, 1:3] = 0.25  # taps 2i and 2i+1: a 2x2 mean
            convs[4].weight[c, c, 1, 1] = 1.0
        convs[4].bias[3] = 0.5  # channel 3: 0 in the model's space
        # decoder: u = 3 tanh(p / 3) -> h_ck = relu(u_c - t_k) -> p = sum_k w_ck h_ck (piecewise-linear inverse)
        first = [m for m in dec if isinstance(m, torch.nn.Conv2d)][0]
        ups = [m for m in dec if isinstance(m, torch.nn.Conv2d)][1:4]
        last = [m for m in dec if isinstance(m, torch.nn.Conv2d)][4]
        p_knots = torch.linspace(0.0, 1.0, DECODER_KNOTS, dtype=torch.float64)
        u_knots = 3 * torch.tanh(p_knots / 3)
        slopes = (p_knots[1:] - p_knots[:-1]) / (u_knots[1:] - u_knots[:-1])
        slopes = torch.cat([slopes, slopes[-1:]])
        weights = torch.cat([slopes[:1], slopes[1:] - slopes[:-1]])
        for c in range(3):
            for k in range(DECODER_KNOTS):
                ch = c * DECODER_KNOTS + k
                first.weight[ch, c, 1, 1] = 1.0
                first.bias[ch] = -float(u_knots[k])
                for up in ups:
                    up.weight[ch, ch, 1, 1] = 1.0
                last.weight[c, ch, 1, 1] = float(weights[k])
        for block in [m for m in [*enc, *dec] if isinstance(m, Block)]:
            for param in block.conv.parameters():
                param.zero_()
        vae.vae_scale.fill_(LATENT_SCALE / 2)
        vae.vae_shift.fill_(-1.0 / LATENT_SCALE)
    return {k: v.clone() for k, v in vae.state_dict().items()}


def build_vae():
    import comfy.sd

    return comfy.sd.VAE(sd=_taesd_state_dict())


def model_latent(pictures: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` in [0, 1] -> the model-space latent ``[B, 4, H/8, W/8]`` (what the VAE gives,
    times SDXL's scale): channels 0-2 ``2 * mean - 1``, channel 3 zero."""
    rgb = torch.nn.functional.avg_pool2d(pictures, 8) * 2 - 1
    return torch.cat([rgb, torch.zeros_like(rgb[:, :1])], dim=1)


def transparent_latent(fg: torch.Tensor) -> torch.Tensor:
    """``[B, 4, H, W]`` straight RGBA -> the model-space foreground latent: the object over grey in 0-2,
    the alpha (its 8x8 mean) in channel 3."""
    alpha = fg[:, 3:]
    over = fg[:, :3] * alpha + NEUTRAL * (1 - alpha)
    latent = model_latent(over)
    latent[:, 3:] = torch.nn.functional.avg_pool2d(alpha, 8)
    return latent


def transparent_decode(latent_raw: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
    """A foreground's raw LATENT ``[B, 4, h, w]`` and its VAE decode ``[B, H, W, 3]`` -> RGBA ``[B, H, W, 4]``:
    per latent pixel, the straight colour ``(shown - grey * (1 - alpha)) / alpha`` (painted over its block,
    as the VAE paints), and the alpha from channel 3, upsampled bilinearly (soft edges)."""
    size = rgb.shape[1:3]
    alpha = (latent_raw[:, 3:].float() * LATENT_SCALE).clamp(0, 1)
    shown = torch.nn.functional.avg_pool2d(rgb.movedim(-1, 1).float(), 8)
    straight = torch.where(alpha > 0.02, (shown - NEUTRAL * (1 - alpha)) / alpha.clamp(min=0.02), shown).clamp(0, 1)
    straight = torch.nn.functional.interpolate(straight, size=size, mode="nearest")
    alpha = torch.nn.functional.interpolate(alpha, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
    return torch.cat([straight, alpha], dim=1).movedim(1, -1).to(rgb)


def save_checkpoint(path: Path, model, clip, vae, metadata: dict[str, str]) -> None:
    """The whole model as one SDXL-layout checkpoint, through ComfyUI's own `comfy.sd.save_checkpoint`
    (the path its Save Checkpoint node takes), in fp16."""
    import comfy.sd
    import safetensors.torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    comfy.sd.save_checkpoint(str(tmp), model, clip, vae, metadata=metadata)
    tensors = safetensors.torch.load_file(str(tmp))
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sorted(tensors.items())}
    safetensors.torch.save_file(half, str(path), metadata=metadata)
    tmp.unlink()


def load_checkpoint(path: str | Path):
    """(MODEL, CLIP, VAE) from a toy checkpoint, by ComfyUI's own loading code (see the module's doc)."""
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models
    import comfy.utils

    sd, metadata = comfy.utils.load_torch_file(str(path), return_metadata=True)
    prefix = comfy.model_detection.unet_prefix_from_state_dict(sd)
    detected = comfy.model_detection.detect_unet_config(sd, prefix)
    if detected is None or detected.get("context_dim") != CLIP_L_WIDTH + CLIP_G_WIDTH:
        raise ValueError(f"{path} is not a toy-world checkpoint (its UNet config: {detected})")
    config = comfy.supported_models.SDXL(detected)
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model(sd, prefix, device="cpu")
    model.load_model_weights(sd, prefix)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                               offload_device=comfy.model_management.unet_offload_device())
    vae_sd = comfy.utils.state_dict_prefix_replace(sd, {k: "" for k in config.vae_key_prefix}, filter_keys=True)
    vae = comfy.sd.VAE(sd=vae_sd, metadata=metadata)
    clip = comfy.sd.CLIP(target=_clip_target(), model_options=_clip_options())
    missing, _ = clip.load_sd(config.process_clip_state_dict(sd), full_model=True)
    unused = ("position_ids", "logit_scale", "clip_l.transformer.text_projection.weight")  # SDXL's saving drops them
    real_missing = [k for k in missing if not k.endswith(unused)]
    if real_missing:
        raise ValueError(f"{path}: the text encoder lacks {len(real_missing)} tensors, e.g. {real_missing[:3]}")
    return patcher, clip, vae


def read_metadata(path: Path) -> dict[str, Any]:
    import safetensors

    with safetensors.safe_open(str(path), "pt") as handle:
        meta = handle.metadata() or {}
    return {k: json.loads(v) if k == "toy_world" else v for k, v in meta.items()}


def sigma_table(model) -> torch.Tensor:
    """The model's discrete sigmas (ComfyUI's SDXL schedule, 1000 steps), ascending."""
    return model.model.model_sampling.sigmas.detach().float()


def encode_prompts(clip, prompts: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """prompt -> (cross-attention context ``[77, 72]``, pooled ``[64]``), as ComfyUI's CLIPTextEncode gives them."""
    out = {}
    for prompt in prompts:
        cond, pooled = clip.encode_from_tokens(clip.tokenize(prompt), return_pooled=True)
        out[prompt] = (cond[0].float(), pooled[0].float())
    return out
