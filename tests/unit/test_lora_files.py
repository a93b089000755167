"""Reading and validating LoRA files (frozen-patcher format) before anything is applied."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from layerfusion.layerfusion_core.weights import lora_files, safetensors_io
from layerfusion.layerfusion_core.weights.lora_files import LoRAFileError

Q = "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"
K2 = "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
CONV = "diffusion_model.input_blocks.1.0.in_layers.2.weight"
SHAPES = {Q: torch.Size([64, 64]), K2: torch.Size([64, 128]), CONV: torch.Size([64, 64, 3, 3]),
          "diffusion_model.input_blocks.0.0.weight": torch.Size([64, 4, 3, 3])}


def frozen(rank: int = 4) -> dict[str, torch.Tensor]:
    return {
        f"{Q}::lora::0": torch.ones(64, rank), f"{Q}::lora::1": torch.ones(rank, 64),
        f"{K2}::lora::0": torch.ones(64, rank), f"{K2}::lora::1": torch.ones(rank, 128),
    }


def test_a_valid_file_gives_factors_per_module():
    lora = lora_files.load_frozen("f.safetensors", frozen(), SHAPES)
    assert set(lora.low_rank) == {Q.removesuffix(".weight"), K2.removesuffix(".weight")}
    assert lora.low_rank[K2.removesuffix(".weight")].down.shape == (4, 128)
    assert lora.full_patches == {} and lora.patched_weights == 2


def test_full_deltas_are_kept_apart():
    tensors = {f"{CONV}::diff::0": torch.zeros(64, 64, 3, 3)}
    lora = lora_files.load_frozen("conv.safetensors", tensors, SHAPES)
    assert lora.low_rank == {} and lora.full_patches[CONV][0] == "diff"


def test_keys_that_match_no_layer_fail_loudly():
    tensors = {"diffusion_model.nowhere.weight::lora::0": torch.ones(2, 2), "diffusion_model.nowhere.weight::lora::1": torch.ones(2, 2)}
    with pytest.raises(LoRAFileError, match=r"x.safetensors: none of its 1 weights matched a layer"):
        lora_files.load_frozen("x.safetensors", tensors, SHAPES)


def test_an_sd15_file_on_sdxl_is_named_as_such():
    sd15 = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    tensors = {**frozen(), f"{sd15}::lora::0": torch.ones(320, 4), f"{sd15}::lora::1": torch.ones(4, 320)}
    with pytest.raises(LoRAFileError, match=r"1 of its 3 weights have no layer.*SD1.5 file"):
        lora_files.load_frozen("layer_sd15_transparent_attn.safetensors", tensors, SHAPES)


def test_a_wrong_shape_names_the_key_and_both_shapes():
    tensors = frozen()
    tensors[f"{K2}::lora::1"] = torch.ones(4, 2048)
    with pytest.raises(LoRAFileError, match=r"attn2.to_k.weight: up \(64, 4\) and down \(4, 2048\) do not fit the weight \(64, 128\)"):
        lora_files.load_frozen("f.safetensors", tensors, SHAPES)


def test_a_half_lora_and_a_foreign_key_are_refused():
    tensors = frozen()
    del tensors[f"{Q}::lora::1"]
    with pytest.raises(LoRAFileError, match="expected '::lora::0' \\(up\\) and '::lora::1' \\(down\\)"):
        lora_files.load_frozen("f.safetensors", tensors, SHAPES)
    with pytest.raises(LoRAFileError, match="not in LayerDiffuse's format"):
        lora_files.load_frozen("f.safetensors", {**frozen(), f"{Q}::loha::0": torch.ones(1)}, SHAPES)


def test_a_widened_input_conv_is_a_conditional_model_not_a_lora():
    tensors = {"diffusion_model.input_blocks.0.0.weight::diff::0": torch.zeros(64, 8, 3, 3)}
    with pytest.raises(LoRAFileError, match="conditional model"):
        lora_files.load_frozen("layer_xl_fg2ble.safetensors", tensors, SHAPES)


def test_only_safetensors_are_read(tmp_path):
    pickle_file = tmp_path / "layer_xl_transparent_attn.ckpt"
    pickle_file.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(safetensors_io.WeightFileError, match="no pickle is ever loaded"):
        safetensors_io.read_safetensors(str(pickle_file))
    not_st = tmp_path / "fake.safetensors"
    not_st.write_bytes(b"PK\x03\x04 this is a zip archive, not safetensors" * 4)
    with pytest.raises(safetensors_io.WeightFileError, match="fake.safetensors: not a safetensors file"):
        safetensors_io.read_safetensors(str(not_st))
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"abc")
    with pytest.raises(safetensors_io.WeightFileError, match="too short"):
        safetensors_io.read_safetensors(str(tiny))


def test_a_truncated_file_is_refused(tmp_path):
    path = tmp_path / "layer_xl_transparent_attn.safetensors"
    save_file(frozen(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(safetensors_io.WeightFileError, match=r"truncated \(100 bytes missing\)"):
        safetensors_io.read_safetensors(str(path))
    path.write_bytes(data[:20])
    with pytest.raises(safetensors_io.WeightFileError, match="header is cut off"):
        safetensors_io.read_safetensors(str(path))


def test_known_files_of_another_kind_are_not_loras(tmp_path):
    path = tmp_path / "vae_transparent_decoder.safetensors"
    save_file({"conv_in.weight": torch.zeros(1)}, str(path))
    with pytest.raises(safetensors_io.WeightFileError, match="is a LayerDiffuse transparent VAE decoder, not a LoRA"):
        lora_files.load_lora(str(path), comfy_model=None)
