"""The tiny SDXL-architecture fixtures are what the tests rely on them to be."""

from __future__ import annotations

import re

import torch

from layerfusion_dev.testnodes import standins, tiny_sdxl
from support.sdxl import SDXL_BLOCK_DEPTHS

SDXL_KEYS = {(block, index) for block, depth in SDXL_BLOCK_DEPTHS.items() for index in range(depth)}
_KEY = re.compile(r"^(input_blocks|middle_block|output_blocks)\.?(\d*)\.?1\.transformer_blocks\.(\d+)\.")


def transformer_keys(state_dict_keys) -> set[tuple[tuple[str, int], int]]:
    keys = set()
    for name in state_dict_keys:
        m = _KEY.match(name)
        if m:
            block = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}[m[1]]
            keys.add(((block, int(m[2] or 0)), int(m[3])))
    return keys


def fired_attention_keys(model_patcher) -> set[tuple[tuple[str, int], int]]:
    """Run one sampling step and record the key of every attn1 call (via ComfyUI's own patch list)."""
    import comfy.sample

    fired = set()

    def record(out, extra_options):
        fired.add((tuple(extra_options["block"]), extra_options["block_index"]))
        return out

    patched = model_patcher.clone()
    patched.set_model_attn1_output_patch(record)
    latent = torch.zeros(1, 4, 8, 8)
    cond = [[torch.zeros(1, 77, tiny_sdxl.CLIP_L_WIDTH + tiny_sdxl.CLIP_G_WIDTH), {"pooled_output": torch.zeros(1, tiny_sdxl.CLIP_G_WIDTH)}]]
    comfy.sample.sample(patched, torch.randn_like(latent), 1, 1.0, "euler", "normal", cond, cond, latent, seed=0,
                        disable_pbar=True)
    return fired


def test_full_variant_is_sdxl_with_its_70_transformer_blocks(tiny_full_unet):
    import comfy.model_base

    assert isinstance(tiny_full_unet.model, comfy.model_base.SDXL)
    keys = transformer_keys(tiny_full_unet.model.diffusion_model.state_dict())
    assert keys == SDXL_KEYS and len(keys) == 70


def test_every_sdxl_key_fires_in_a_real_sampling_step(tiny_full_unet):
    assert fired_attention_keys(tiny_full_unet) == SDXL_KEYS


def test_depth1_variant_keeps_one_block_per_stage(tiny):
    keys = transformer_keys(tiny.model.model.diffusion_model.state_dict())
    assert keys == {(block, 0) for block in SDXL_BLOCK_DEPTHS}
    assert fired_attention_keys(tiny.model) == keys


def test_weights_are_seeded():
    a = tiny_sdxl.build_unet("depth1", seed=3).model.diffusion_model.state_dict()
    b = tiny_sdxl.build_unet("depth1", seed=3).model.diffusion_model.state_dict()
    c = tiny_sdxl.build_unet("depth1", seed=4).model.diffusion_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["out.2.weight"], c["out.2.weight"])
    assert all(torch.isfinite(v).all() for v in a.values())


def test_clip_and_vae_fit_the_unet(tiny):
    cond, pooled = tiny.clip.encode_from_tokens(tiny.clip.tokenize("a glass bottle"), return_pooled=True)
    assert cond.shape == (1, 77, tiny_sdxl.unet_config()["context_dim"])
    assert pooled.shape[-1] + tiny_sdxl.SIZE_EMBEDDINGS == tiny_sdxl.unet_config()["adm_in_channels"]
    image = tiny.vae.decode(torch.randn(1, 4, 8, 8))
    assert image.shape == (1, 64, 64, 3) and 0 <= image.min() <= image.max() <= 1


def test_attention_lora_standin_for_full_depth_has_every_real_key(tiny_full_unet):
    shapes = standins.unet_shapes(tiny_full_unet)
    lora = standins.attn_lora_standin(shapes, rank=4)
    assert set(lora) == set(standins.layout()[standins.ATTN_FILE])
    for name, tensor in lora.items():
        target, _, index = name.split("::")
        rows, cols = shapes[target]
        assert tensor.shape == ((rows, 4) if index == "0" else (4, cols)), name
        assert tensor.dtype == torch.float16


def test_attention_lora_standin_for_depth1_keeps_the_keys_it_has(tiny):
    shapes = standins.unet_shapes(tiny.model)
    lora = standins.attn_lora_standin(shapes, rank=4)
    assert lora and set(lora) < set(standins.layout()[standins.ATTN_FILE])
    assert len(lora) == 11 * 2 * 4 * 2  # blocks x (attn1, attn2) x (q, k, v, out) x (up, down)


def test_written_standins_have_the_real_names_and_shapes(tmp_path, tiny):
    from safetensors import safe_open

    paths = standins.write_standins(tmp_path / "layer_model", standins.unet_shapes(tiny.model), rank=4)
    for name in (standins.DECODER_FILE, standins.ENCODER_FILE):
        with safe_open(str(paths[name]), framework="pt") as f:
            assert {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - a safetensors handle, not a dict == standins.layout()[name]
