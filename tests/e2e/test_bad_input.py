"""Bad input on the real server: a clear error naming the node, the input and the fix, raised
before any work; or, for prompts, a correct result."""

from __future__ import annotations

import pickle

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from layerfusion_dev.comfy_server import ServerError
from layerfusion_dev.testnodes import standins
from layerfusion_dev.workflows import load_api, on_tiny_model, output_paths

TINY = {"class_type": "LayerFusionTestTinySDXL", "inputs": {"variant": "depth1", "seed": 0}}
SD15 = {"class_type": "LayerFusionTestTinySD15", "inputs": {"seed": 0}}
TRUNCATED, PICKLED, DAMAGED = "truncated_attn.safetensors", "pickled.safetensors", "nan_decoder.safetensors"
NOT_SAFETENSORS, NO_MATCH = "a_pickle.ckpt", "sd15_only_lora.safetensors"


@pytest.fixture(scope="module")
def bad_files(server):
    """Broken and foreign weight files beside the good stand-ins, as users end up having them."""
    layer_model, loras = server.models_dir / "layer_model", server.models_dir / "loras"
    good = (layer_model / standins.ATTN_FILE).read_bytes()
    (layer_model / TRUNCATED).write_bytes(good[: len(good) // 2])
    with open(layer_model / PICKLED, "wb") as f:  # a pickle under a safetensors name: never unpickled
        pickle.dump({"weight": [1.0, 2.0]}, f)
    with open(layer_model / NOT_SAFETENSORS, "wb") as f:
        pickle.dump({"weight": [1.0, 2.0]}, f)
    decoder = load_file(str(layer_model / standins.DECODER_FILE))
    first = sorted(decoder)[0]
    decoder[first] = decoder[first].clone()
    decoder[first].view(-1)[0] = float("nan")
    save_file(decoder, str(layer_model / DAMAGED))
    save_file({"lora_unet_input_blocks_1_1_proj_in.lora_up.weight": torch.zeros(320, 4),
               "lora_unet_input_blocks_1_1_proj_in.lora_down.weight": torch.zeros(4, 320)}, str(loras / NO_MATCH))
    return layer_model


def run_error(server, graph: dict) -> str:
    with pytest.raises(ServerError) as err:
        server.run(graph)
    return str(err.value)


def sampler_graph(model: list, latent: dict, positive: list | None = None, negative: list | None = None) -> dict:
    g = {
        "1": TINY,
        "2": {"class_type": "LayerFusionConditioning", "inputs": {"clip": ["1", 1], "fg": "a bottle", "bg": "a table",
                                                                  "blend": "", "negative": "blurry"}},
        "3": latent,
        "4": {"class_type": "KSampler", "inputs": {
            "model": model, "positive": positive or ["2", 0], "negative": negative or ["2", 1], "latent_image": ["3", 0],
            "seed": 1, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "5": {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": "bad_input"}},
    }
    return g


def fusion_node(model: list) -> dict:
    return {"class_type": "LayerFusionApply", "inputs": {
        "model": model, "d": 10.0, "prior_at": 0.8, "prior_mode": "in_run", "blend_start": 0.0, "blend_end": 1.0,
        "bg_mode": "bg_from_bl", "blend_blend": True, "blend_fg": True, "blend_bg": True}}


def lora_node(model: list, name: str) -> dict:
    return {"class_type": "LayerFusionLoraApply", "inputs": {"model": model, "lora_name": name, "branch": "fg", "weight": 1.0}}


def decode_graph(decoder: str, latent: dict | None = None, image_size: tuple[int, int] = (64, 64), poison: str | None = None) -> dict:
    g = {
        "1": TINY,
        "2": latent or {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": image_size[0], "height": image_size[1], "batch_size": 1, "color": 0}},
        "4": {"class_type": "LayerFusionTransparentDecode", "inputs": {
            "samples": ["2", 0], "images": ["3", 0], "decoder_name": decoder, "stream": "fg", "augment": False,
            "sub_batch_size": 8, "mask_polarity": "1 = transparent (ComfyUI)"}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }
    if poison:
        g["6"] = {"class_type": "LayerFusionTestPoison", "inputs": {"value": poison, "latent": ["2", 0]}}
        g["4"]["inputs"]["samples"] = ["6", 0]
    return g


# ---- not SDXL --------------------------------------------------------------------------------
@pytest.mark.parametrize("node", ["apply", "lora", "conditional"])
def test_a_model_that_is_not_sdxl_is_refused_by_name(server, node):
    graph = sampler_graph(["9", 0], {"class_type": "LayerFusionEmptyLatent", "inputs": {"width": 64, "height": 64, "sets": 1}})
    graph["8"] = SD15
    if node == "apply":
        graph["9"], name = fusion_node(["8", 0]), "LayerFusion Apply"
    elif node == "lora":
        graph["9"], name = lora_node(["8", 0], standins.ATTN_FILE), "LayerFusion LoRA Apply"
    else:
        graph["7"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
        graph["9"] = {"class_type": "LayerFusionLayerDiffuseCond", "inputs": {
            "model": ["8", 0], "positive": ["2", 0], "negative": ["2", 1], "condition": ["7", 0],
            "model_name": "layer_xl_fg2ble.safetensors", "weight": 1.0, "stop_at": 1.0}}
        name = "LayerFusion LayerDiffuse Conditional"
    message = run_error(server, graph)
    assert f"{name}: input 'model': is a BaseModel model, expected SDXL" in message
    assert "load an SDXL checkpoint" in message


# ---- batch layout -----------------------------------------------------------------------------
def test_a_batch_that_is_not_three_streams_is_refused_before_sampling(server):
    graph = sampler_graph(["9", 0], {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 4}})
    graph["9"] = fusion_node(["1", 0])
    before = server.log_text().count("it/s]") + server.log_text().count("s/it]")
    message = run_error(server, graph)
    assert "LayerFusion Apply: the sampler's latent has 4 rows, expected a multiple of 3" in message
    assert "LayerFusion Empty Latent" in message
    after = server.log_text().count("it/s]") + server.log_text().count("s/it]")
    assert after == before  # no sampling step ran (no progress line in the log)


# ---- sizes ----------------------------------------------------------------------------------
def test_decode_refuses_images_of_another_shape_than_the_latent(server):
    message = run_error(server, decode_graph(standins.DECODER_FILE, image_size=(96, 64)))
    assert "LayerFusion Transparent Decode: input 'images': are 96x64 pixels, the latent's decode would be 64x64" in message


def test_decode_refuses_a_latent_that_is_not_sdxl(server):
    latent = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    message = run_error(server, decode_graph(standins.DECODER_FILE, latent=latent))
    assert ("LayerFusion Transparent Decode: input 'samples': has 16 latent channels (shape (1, 16, 8, 8)), expected 4 "
            "(SDXL, as vae_transparent_decoder.safetensors)") in message
    assert "or choose the FLUX file (vae_transparent_decoder_flux.safetensors) in 'decoder_name'" in message


def test_decode_of_an_upscaled_image_still_works(server):
    server.run(decode_graph(standins.DECODER_FILE, image_size=(128, 128)))


def test_a_condition_latent_of_another_size_than_the_generation_is_refused(server):
    graph = {
        "1": TINY,
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a table"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 48, "height": 48, "batch_size": 1}},
        "5": {"class_type": "LayerFusionLayerDiffuseCond", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "condition": ["4", 0],
            "model_name": "layer_xl_fg2ble.safetensors", "weight": 1.0, "stop_at": 1.0}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["5", 0], "positive": ["5", 1], "negative": ["5", 2], "latent_image": ["6", 0], "seed": 1, "steps": 2,
            "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "8": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "bad_input"}},
    }
    message = run_error(server, graph)
    assert "LayerFusion LayerDiffuse Conditional: the condition image is 48x48 but the generation is 64x64" in message


# ---- weight files ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,expected", [
    (standins.ENCODER_FILE, "vae_transparent_encoder.safetensors"),
    (TRUNCATED, "download it again"),
    (PICKLED, f"{PICKLED}: not a safetensors file"),
    (DAMAGED, "holds NaN or infinite values (a damaged file); download it again"),
])
def test_decode_refuses_a_wrong_or_broken_decoder_file(server, bad_files, name, expected):
    message = run_error(server, decode_graph(name))
    assert "LayerFusion Transparent Decode: input 'decoder_name'" in message and expected in message


@pytest.mark.parametrize("name,expected", [
    (TRUNCATED, f"{TRUNCATED}: the file is truncated"),
    (PICKLED, f"{PICKLED}: not a safetensors file"),
    (NO_MATCH, "none of its 2 UNet keys matched a layer of this model"),
])
def test_lora_apply_refuses_a_broken_or_foreign_file(server, bad_files, name, expected):
    graph = sampler_graph(["9", 0], {"class_type": "LayerFusionEmptyLatent", "inputs": {"width": 64, "height": 64, "sets": 1}})
    graph["9"] = lora_node(["1", 0], name)
    message = run_error(server, graph)
    assert "LayerFusion LoRA Apply: input 'lora_name'" in message and expected in message, message


def test_files_that_are_not_safetensors_are_never_offered_nor_accepted(server, bad_files):
    info = server.object_info()
    offered = {
        "LayerFusionLoraApply": info["LayerFusionLoraApply"]["input"]["required"]["lora_name"][1]["options"],
        "LayerFusionTransparentDecode": info["LayerFusionTransparentDecode"]["input"]["required"]["decoder_name"][1]["options"],
        "LayerFusionLayerDiffuseCond": info["LayerFusionLayerDiffuseCond"]["input"]["required"]["model_name"][1]["options"],
    }
    for node, options in offered.items():
        assert NOT_SAFETENSORS not in options and all(o.endswith(".safetensors") for o in options), node
        assert TRUNCATED in options or node != "LayerFusionLoraApply"  # the folder was re-read: new files are listed
    message = run_error(server, decode_graph(NOT_SAFETENSORS))
    assert f"input 'decoder_name': {NOT_SAFETENSORS} is not a .safetensors file: only safetensors are read" in message


# ---- prompts --------------------------------------------------------------------------------
@pytest.mark.parametrize("fg,bg", [("", ""), (", ".join(["a tall clear glass bottle of green olive oil"] * 40), "a table")])
def test_empty_and_over_long_prompts_run(server, fg, bg):
    graph = on_tiny_model(load_api("layerfusion"), size=64, steps=2)
    graph["prompts"]["inputs"].update(fg=fg, bg=bg, blend="", negative="")
    graph["latent_save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["sample", 0], "filename_prefix": "prompts"}}
    outputs = server.run(graph)
    (entry,) = outputs["latent_save"]["latents"]
    latent = load_file(str(server.output_dir / entry["subfolder"] / entry["filename"]))["latent_tensor"]
    assert latent.shape == (3, 4, 8, 8) and bool(torch.isfinite(latent).all())
    images = [p for p in output_paths(outputs, server.output_dir) if p.suffix == ".png"]
    assert sorted(p.name.split("_")[0] for p in images) == ["bg", "blend", "fg", "masks"]
    for path in images:
        with Image.open(path) as img:
            img.load()  # written whole


# ---- NaN and inf ----------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_inputs_are_reported_by_node_and_input(server, value):
    message = run_error(server, decode_graph(standins.DECODER_FILE, poison=value))
    expected = "1 NaN and 0 infinite values" if value == "nan" else "0 NaN and 1 infinite values"
    assert f"LayerFusion Transparent Decode: input 'samples': contains {expected}" in message

    split = {
        "1": {"class_type": "LayerFusionEmptyLatent", "inputs": {"width": 64, "height": 64, "sets": 1}},
        "2": {"class_type": "LayerFusionTestPoison", "inputs": {"value": value, "latent": ["1", 0]}},
        "3": {"class_type": "LayerFusionSplit", "inputs": {"latent": ["2", 0]}},
        "4": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "nan"}},
    }
    assert f"LayerFusion Split: input 'latent': contains {expected}" in run_error(server, split)

    encode = {
        "1": TINY,
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "3": {"class_type": "LayerFusionTestPoison", "inputs": {"value": value, "image": ["2", 0]}},
        "4": {"class_type": "LayerFusionTransparentEncode", "inputs": {"image": ["3", 1], "vae": ["1", 2],
                                                                       "encoder_name": standins.ENCODER_FILE}},
        "5": {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": "nan"}},
    }
    assert f"LayerFusion Transparent Encode: input 'image': contains {expected}" in run_error(server, encode)


def test_the_server_works_after_the_errors(server, bad_files):
    server.run(decode_graph(standins.DECODER_FILE))


def test_a_missing_file_says_which_where_and_how_to_get_it(server):
    missing = "layer_xl_transparent_conv.safetensors"  # a known file the server does not have
    graph = sampler_graph(["9", 0], {"class_type": "LayerFusionEmptyLatent", "inputs": {"width": 64, "height": 64, "sets": 1}})
    graph["9"] = lora_node(["1", 0], missing)
    message = run_error(server, graph)
    assert f"LayerFusion LoRA Apply: input 'lora_name': {missing} is not in ComfyUI's layer_model or loras folders" in message
    assert f"https://huggingface.co/LayerDiffusion/layerdiffusion-v1/resolve/main/{missing}" in message
    assert str(server.models_dir / "layer_model") in message and f"download_models.py {missing}" in message
