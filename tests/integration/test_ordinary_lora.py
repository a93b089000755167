"""Ordinary LoRA files (kohya naming, mapped by ComfyUI's own key mapping) and full-delta files
through LayerFusion LoRA Apply's loader and patch, on the tiny SDXL model."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from layerfusion.layerfusion_core.layout.rows import Branch
from layerfusion.layerfusion_core.patching.branch_lora import apply_branch_lora
from layerfusion.layerfusion_core.patching.calls import enable_layered_batch
from layerfusion.layerfusion_core.weights import lora_files
from layerfusion.layerfusion_core.weights.lora_files import LoRAFileError
from layerfusion_dev.testnodes import tiny_sdxl
from support.sampling import changed_rows, identical_rows, sample

CHANGED = 1e-2
ATTN_PREFIXES = [
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
    "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k",
    "lora_unet_output_blocks_5_1_transformer_blocks_0_ff_net_2",
]
CONV_PREFIX = "lora_unet_input_blocks_1_0_in_layers_2"


@pytest.fixture(scope="module")
def unet():
    return tiny_sdxl.build_unet("depth1", seed=0)


@pytest.fixture(scope="module")
def layered(unet):
    return enable_layered_batch(unet)


def kohya(unet, prefixes, rank=4, alpha=2.0, seed=0, conv=False) -> dict[str, torch.Tensor]:
    import comfy.lora

    key_map = comfy.lora.model_lora_keys_unet(unet.model, {})
    shapes = unet.model.state_dict()
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for prefix in prefixes:
        shape = shapes[key_map[prefix]].shape
        if len(shape) == 4:
            out[f"{prefix}.lora_up.weight"] = torch.randn(shape[0], rank, 1, 1, generator=gen) * 0.1
            out[f"{prefix}.lora_down.weight"] = torch.randn(rank, *shape[1:], generator=gen) * 0.1
        else:
            out[f"{prefix}.lora_up.weight"] = torch.randn(shape[0], rank, generator=gen) * 0.1
            out[f"{prefix}.lora_down.weight"] = torch.randn(rank, shape[1], generator=gen) * 0.1
        out[f"{prefix}.alpha"] = torch.tensor(alpha)
    return out


def write(tmp_path, name, tensors) -> str:
    path = tmp_path / name
    save_file(tensors, str(path))
    return str(path)


def test_kohya_lora_on_the_bg_branch_equals_it_merged(tmp_path, unet, layered):
    tensors = kohya(unet, ATTN_PREFIXES, rank=4, alpha=2.0)
    tensors["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] = torch.zeros(4, 4)  # ignored
    lora = lora_files.load_lora(write(tmp_path, "style.safetensors", tensors), unet.model)
    assert len(lora.low_rank) == 3 and lora.full_patches == {} and lora.ignored_keys == 1
    assert all(f.scale == 0.5 for f in lora.low_rank.values())  # alpha / rank
    base = sample(layered, 3)
    out = sample(apply_branch_lora(layered, lora, Branch.BG, 0.8), 3)
    assert changed_rows(out, base, CHANGED) == [1] and identical_rows(out, base) == [0, 2]

    import comfy.lora

    key_map = comfy.lora.model_lora_keys_unet(unet.model, {})
    merged = tiny_sdxl.build_unet("depth1", seed=0)
    params = dict(merged.model.named_parameters())
    with torch.no_grad():
        for prefix in ATTN_PREFIXES:
            up, down = tensors[f"{prefix}.lora_up.weight"], tensors[f"{prefix}.lora_down.weight"]
            params[key_map[prefix]].add_(0.8 * (2.0 / 4) * up @ down)
    reference = sample(enable_layered_batch(merged), 3)
    assert torch.allclose(out[1], reference[1], rtol=1e-4, atol=1e-4 * reference[1].abs().max().item())


def test_conv_lora_runs_only_on_all_rows(tmp_path, unet, layered):
    lora = lora_files.load_lora(write(tmp_path, "locon.safetensors", kohya(unet, [CONV_PREFIX, ATTN_PREFIXES[0]])), unet.model)
    assert len(lora.full_patches) == 1 and len(lora.low_rank) == 1
    with pytest.raises(ValueError, match="cannot run on the 'fg' rows alone; use branch 'all'"):
        apply_branch_lora(layered, lora, Branch.FG, 1.0)
    out = sample(apply_branch_lora(layered, lora, Branch.ALL, 1.0), 3)
    assert changed_rows(out, sample(layered, 3), CHANGED) == [0, 1, 2]


def test_full_delta_file_is_a_weight_patch_on_all_and_refused_per_branch(tmp_path, unet, layered):
    key = "diffusion_model.input_blocks.1.0.in_layers.2.weight"
    delta = torch.randn(unet.model.state_dict()[key].shape, generator=torch.Generator().manual_seed(3)) * 0.2
    lora = lora_files.load_lora(write(tmp_path, "layer_xl_transparent_conv.safetensors", {f"{key}::diff::0": delta}), unet.model)
    with pytest.raises(ValueError, match="full deltas"):
        apply_branch_lora(layered, lora, Branch.FG, 1.0)
    out = sample(apply_branch_lora(layered, lora, Branch.ALL, 1.0), 3)
    assert changed_rows(out, sample(layered, 3), CHANGED) == [0, 1, 2]


def test_lora_keys_for_another_model_fail_before_anything_is_applied(tmp_path, unet):
    foreign = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.ones(2, 2)}
    with pytest.raises(LoRAFileError, match="none of its 1 UNet keys matched"):
        lora_files.load_lora(write(tmp_path, "sd15_style.safetensors", foreign), unet.model)
    partly = {**kohya(unet, ATTN_PREFIXES[:1]), **{k.replace("input_blocks_4", "input_blocks_1"): v for k, v in kohya(unet, ATTN_PREFIXES[:1]).items()}}
    with pytest.raises(LoRAFileError, match="match no layer of this model"):
        lora_files.load_lora(write(tmp_path, "partly.safetensors", partly), unet.model)
    te_only = {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.ones(2, 2)}
    with pytest.raises(LoRAFileError, match="has no UNet weights"):
        lora_files.load_lora(write(tmp_path, "te.safetensors", te_only), unet.model)


def test_frozen_file_for_sd15_fails_on_the_sdxl_model(tmp_path, unet):
    sd15 = {}
    for block in (1, 2):
        key = f"diffusion_model.input_blocks.{block}.1.transformer_blocks.0.attn1.to_q.weight"
        sd15[f"{key}::lora::0"], sd15[f"{key}::lora::1"] = torch.ones(320, 4), torch.ones(4, 320)
    with pytest.raises(LoRAFileError, match="none of its 2 weights matched.*SD1.5 file"):
        lora_files.load_lora(write(tmp_path, "layer_sd15_transparent_attn.safetensors", sd15), unet.model)
