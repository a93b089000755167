"""Transparent decode and encode in real server workflows: PNGs with a real alpha channel."""

from __future__ import annotations

import numpy as np
from PIL import Image

from layerfusion_dev.testnodes import standins
from layerfusion_dev.workflows import output_paths

TINY = {"class_type": "LayerFusionTestTinySDXL", "inputs": {"variant": "depth1", "seed": 0}}


def sampler(model, latent, denoise=1.0):
    return {"class_type": "KSampler", "inputs": {
        "model": model, "positive": ["p", 0], "negative": ["n", 0], "latent_image": latent, "seed": 3,
        "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": denoise}}


def prompts():
    return {"p": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["m", 1], "text": "a glass bottle"}},
            "n": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["m", 1], "text": "blurry"}}}


def decode_and_save(latent, prefix, stream="fg"):
    return {
        "d": {"class_type": "VAEDecode", "inputs": {"samples": latent, "vae": ["m", 2]}},
        "t": {"class_type": "LayerFusionTransparentDecode", "inputs": {
            "samples": latent, "images": ["d", 0], "decoder_name": standins.DECODER_FILE, "stream": stream,
            "augment": True, "sub_batch_size": 8, "mask_polarity": "1 = transparent (ComfyUI)"}},
        "s": {"class_type": "SaveImage", "inputs": {"images": ["t", 0], "filename_prefix": prefix}},
    }


def rgba_pngs(server, outputs):
    images = []
    for path in output_paths(outputs, server.output_dir):
        with Image.open(path) as img:
            images.append((img.mode, np.asarray(img)))
    return images


def test_single_transparent_image_with_the_stock_ksampler(server):
    graph = {"m": TINY, **prompts(),
             "l": {"class_type": "LayerFusionLoraApply", "inputs": {"model": ["m", 0], "lora_name": standins.ATTN_FILE, "branch": "fg", "weight": 1.0}},
             "e": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
             "k": sampler(["l", 0], ["e", 0]),
             **decode_and_save(["k", 0], "single")}
    ((mode, pixels),) = rgba_pngs(server, server.run(graph))
    assert mode == "RGBA" and pixels.shape == (64, 64, 4)


def test_layerfusion_batch_decodes_the_fg_stream_and_the_png_alpha_is_the_decoders(server):
    graph = {"m": TINY, **prompts(),
             "e": {"class_type": "LayerFusionEmptyLatent", "inputs": {"width": 64, "height": 64, "sets": 2}},
             "k": sampler(["m", 0], ["e", 0]),
             **decode_and_save(["k", 0], "fg"),
             # the MASK output (1 = transparent) as a picture, and ComfyUI's own JoinImageWithAlpha round trip
             "mi": {"class_type": "MaskToImage", "inputs": {"mask": ["t", 2]}},
             "ms": {"class_type": "SaveImage", "inputs": {"images": ["mi", 0], "filename_prefix": "mask"}},
             "j": {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["t", 1], "alpha": ["t", 2]}},
             "js": {"class_type": "SaveImage", "inputs": {"images": ["j", 0], "filename_prefix": "joined"}}}
    outputs = server.run(graph)
    by_node = {node: [np.asarray(Image.open(server.output_dir / i["subfolder"] / i["filename"])) for i in out["images"]]
               for node, out in outputs.items() if "images" in out}
    assert len(by_node["s"]) == 2 and all(img.shape == (64, 64, 4) for img in by_node["s"])
    for rgba, mask, joined in zip(by_node["s"], by_node["ms"], by_node["js"]):
        alpha = rgba[..., 3].astype(int)
        assert np.abs(alpha - (255 - mask[..., 0].astype(int))).max() <= 1  # PNG alpha == decoder alpha
        assert np.abs(joined.astype(int) - rgba.astype(int)).max() <= 1  # JoinImageWithAlpha round trip


def test_img2img_of_a_transparent_png(server):
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[..., :3] = (40, 160, 220)
    rgba[16:48, 16:48, 3] = 255
    Image.fromarray(rgba, "RGBA").save(server.base / "input" / "cutout.png")
    graph = {"m": TINY, **prompts(),
             "i": {"class_type": "LoadImage", "inputs": {"image": "cutout.png"}},
             "x": {"class_type": "LayerFusionTransparentEncode", "inputs": {
                 "image": ["i", 0], "vae": ["m", 2], "encoder_name": standins.ENCODER_FILE, "mask": ["i", 1]}},
             "k": sampler(["m", 0], ["x", 0], denoise=0.5),
             **decode_and_save(["k", 0], "img2img")}
    ((mode, pixels),) = rgba_pngs(server, server.run(graph))
    assert mode == "RGBA" and pixels.shape == (64, 64, 4)


# ---- FLUX (issue 10) --------------------------------------------------------------------------
FLUX_DECODER, FLUX_ENCODER = standins.FLUX_DECODER_FILE, standins.FLUX_ENCODER_FILE


def tiny_flux() -> dict:
    return {"fm": {"class_type": "LayerFusionTestTinyFluxModel", "inputs": {"seed": 0}},
            "fc": {"class_type": "LayerFusionTestTinyFluxClip", "inputs": {"seed": 0}},
            "fv": {"class_type": "LayerFusionTestTinyFluxVae", "inputs": {"seed": 0}},
            "fp": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["fc", 0], "text": "a glass bottle"}},
            "fg": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["fp", 0], "guidance": 3.5}}}


def flux_sampler(latent, denoise=1.0):
    return {"class_type": "KSampler", "inputs": {
        "model": ["fm", 0], "positive": ["fg", 0], "negative": ["fp", 0], "latent_image": latent, "seed": 3,
        "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": denoise}}


def flux_decode_and_save(latent, prefix, decoder=FLUX_DECODER):
    return {
        "d": {"class_type": "VAEDecode", "inputs": {"samples": latent, "vae": ["fv", 0]}},
        "t": {"class_type": "LayerFusionTransparentDecode", "inputs": {
            "samples": latent, "images": ["d", 0], "decoder_name": decoder, "stream": "fg",
            "augment": False, "sub_batch_size": 8, "mask_polarity": "1 = transparent (ComfyUI)"}},
        "s": {"class_type": "SaveImage", "inputs": {"images": ["t", 0], "filename_prefix": prefix}},
    }


def test_flux_files_are_offered_by_both_nodes(server):
    info = server.object_info()
    assert FLUX_DECODER in info["LayerFusionTransparentDecode"]["input"]["required"]["decoder_name"][1]["options"]
    assert FLUX_ENCODER in info["LayerFusionTransparentEncode"]["input"]["required"]["encoder_name"][1]["options"]


def test_flux_img2img_of_a_transparent_png_through_the_flux_encoder_and_decoder(server):
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[..., :3] = (220, 60, 40)
    rgba[8:40, 16:56, 3] = 255
    Image.fromarray(rgba, "RGBA").save(server.base / "input" / "flux_cutout.png")
    graph = {**tiny_flux(),
             "i": {"class_type": "LoadImage", "inputs": {"image": "flux_cutout.png"}},
             "x": {"class_type": "LayerFusionTransparentEncode", "inputs": {
                 "image": ["i", 0], "vae": ["fv", 0], "encoder_name": FLUX_ENCODER, "mask": ["i", 1]}},
             "k": flux_sampler(["x", 0], denoise=0.5),
             **flux_decode_and_save(["k", 0], "flux_img2img")}
    ((mode, pixels),) = rgba_pngs(server, server.run(graph))
    assert mode == "RGBA" and pixels.shape == (64, 64, 4)


def test_latents_and_files_of_different_families_are_refused_by_name(server):
    from layerfusion_dev.comfy_server import ServerError

    sdxl_latent = {"e": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}}
    graph = {**tiny_flux(), **sdxl_latent, **flux_decode_and_save(["e", 0], "mismatch")}
    graph["d"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}}  # pixels only
    try:
        server.run(graph)
        raise AssertionError("an SDXL latent was decoded with the FLUX decoder")
    except ServerError as err:
        message = str(err)
    assert ("LayerFusion Transparent Decode: input 'samples': has 4 latent channels (shape (1, 4, 8, 8)), expected 16 "
            f"(FLUX, as {FLUX_DECODER})") in message
    assert f"or choose the SDXL file ({standins.DECODER_FILE}) in 'decoder_name'" in message

    encode = {"m": TINY, "i": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
              "x": {"class_type": "LayerFusionTransparentEncode", "inputs": {"image": ["i", 0], "vae": ["m", 2], "encoder_name": FLUX_ENCODER}},
              "v": {"class_type": "SaveLatent", "inputs": {"samples": ["x", 0], "filename_prefix": "mismatch"}}}
    try:
        server.run(encode)
        raise AssertionError("the SDXL VAE was used with the FLUX encoder")
    except ServerError as err:
        message = str(err)
    assert f"LayerFusion Transparent Encode: input 'vae': makes 4-channel latents, expected 16 (FLUX, as {FLUX_ENCODER})" in message
