"""Transparent decode and encode in real server workflows: PNGs with a real alpha channel."""

from __future__ import annotations

import numpy as np
from PIL import Image

from layerfusion_testnodes import standins
from support.workflows import output_paths

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
