"""LayerFusion LoRA Apply in a real server workflow with the stock KSampler."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from layerfusion_dev.comfy_server import ServerError
from layerfusion_dev.testnodes import standins

CHANGED = 1e-2


def graph(branch: str | None, lora: str = standins.ATTN_FILE, sets: int = 1, prefix: str = "lora") -> dict:
    """tiny model -> [LoRA Apply] -> layered batch -> KSampler -> SaveLatent."""
    model = ["1", 0]
    g = {
        "1": {"class_type": "LayerFusionTestTinySDXL", "inputs": {"variant": "depth1", "seed": 0}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a glass bottle"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}},
        "4": {"class_type": "LayerFusionEmptyLatent", "inputs": {"width": 64, "height": 64, "sets": sets}},
        "6": {"class_type": "LayerFusionTestLayeredBatch", "inputs": {"model": model}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["6", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 7,
            "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "8": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": prefix}},
    }
    if branch is not None:
        g["5"] = {"class_type": "LayerFusionLoraApply", "inputs": {"model": model, "lora_name": lora, "branch": branch, "weight": 1.0}}
        g["6"]["inputs"]["model"] = ["5", 0]
    return g


def latent_of(server, outputs) -> torch.Tensor:
    (entry,) = outputs["8"]["latents"]
    return load_file(str(server.output_dir / entry["subfolder"] / entry["filename"]))["latent_tensor"]


def test_lora_apply_is_listed_with_the_layer_model_files(server):
    info = server.object_info()["LayerFusionLoraApply"]
    required = info["input"]["required"]
    assert standins.ATTN_FILE in required["lora_name"][1]["options"]
    assert required["branch"][1]["options"] == ["fg", "bg", "blend", "all"]
    assert (required["weight"][1]["min"], required["weight"][1]["max"], required["weight"][1]["default"]) == (-2.0, 3.0, 1.0)


@pytest.fixture(scope="module")
def plain(server) -> torch.Tensor:
    """The unpatched graph's latent, run once for the three branches below."""
    return latent_of(server, server.run(graph(None, prefix="plain")))


@pytest.mark.parametrize("branch,rows", [("fg", [0]), ("bg", [1]), ("blend", [2])])
def test_workflow_differs_from_unpatched_only_on_the_chosen_rows(server, plain, branch, rows):
    patched = latent_of(server, server.run(graph(branch, prefix=branch)))
    assert plain.shape == patched.shape == (3, 4, 8, 8)
    changed = [r for r in range(3) if (patched[r] - plain[r]).abs().max() > CHANGED]
    same = [r for r in range(3) if torch.equal(patched[r], plain[r])]
    assert changed == rows and same == [r for r in range(3) if r not in rows]


def test_a_file_that_is_not_a_lora_is_refused_with_the_node_and_input(server):
    with pytest.raises(ServerError, match=r"LayerFusion LoRA Apply: input 'lora_name': vae_transparent_decoder.safetensors: "
                                          r"is a LayerDiffuse transparent VAE decoder, not a LoRA"):
        server.run(graph("fg", lora=standins.DECODER_FILE))


def test_a_name_not_in_the_folder_lists_is_refused_before_running(server):
    with pytest.raises(ServerError, match="lora_name"):
        server.run(graph("fg", lora="../../etc/passwd"))
