"""LayerFusion through the server with ComfyUI's three sampler nodes: KSampler, KSamplerAdvanced and
SamplerCustomAdvanced (with CFGGuider)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

CHANGED = 1e-3


def base_graph(blend: bool) -> dict:
    return {
        "m": {"class_type": "LayerFusionTestTinySDXL", "inputs": {"variant": "depth1", "seed": 0}},
        "l": {"class_type": "LayerFusionLoraApply", "inputs": {"model": ["m", 0], "lora_name": "layer_xl_transparent_attn.safetensors",
                                                               "branch": "fg", "weight": 1.0}},
        "f": {"class_type": "LayerFusionApply", "inputs": {
            "model": ["l", 0], "d": 10.0, "prior_at": 0.8, "prior_mode": "prior_pass", "blend_start": 0.0, "blend_end": 1.0,
            "bg_mode": "bg_from_bl", "blend_blend": blend, "blend_fg": blend, "blend_bg": blend}},
        "c": {"class_type": "LayerFusionConditioning", "inputs": {"clip": ["m", 1], "fg": "a glass bottle", "bg": "a wooden table",
                                                                  "blend": "", "negative": "blurry"}},
        "e": {"class_type": "LayerFusionEmptyLatent", "inputs": {"width": 64, "height": 64, "sets": 1}},
    }


def with_sampler(graph: dict, kind: str) -> dict:
    common = {"steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal"}
    if kind == "KSampler":
        graph["s"] = {"class_type": "KSampler", "inputs": {"model": ["f", 0], "positive": ["c", 0], "negative": ["c", 1],
                                                           "latent_image": ["e", 0], "seed": 5, "denoise": 1.0, **common}}
        out = ["s", 0]
    elif kind == "KSamplerAdvanced":
        graph["s"] = {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["f", 0], "positive": ["c", 0], "negative": ["c", 1], "latent_image": ["e", 0], "add_noise": "enable",
            "noise_seed": 5, "start_at_step": 0, "end_at_step": 10000, "return_with_leftover_noise": "disable", **common}}
        out = ["s", 0]
    else:
        graph.update({
            "n": {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}},
            "g": {"class_type": "CFGGuider", "inputs": {"model": ["f", 0], "positive": ["c", 0], "negative": ["c", 1], "cfg": 5.0}},
            "k": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
            "z": {"class_type": "BasicScheduler", "inputs": {"model": ["f", 0], "scheduler": "normal", "steps": 4, "denoise": 1.0}},
            "s": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["n", 0], "guider": ["g", 0], "sampler": ["k", 0],
                                                                     "sigmas": ["z", 0], "latent_image": ["e", 0]}},
        })
        out = ["s", 0]
    graph["save"] = {"class_type": "SaveLatent", "inputs": {"samples": out, "filename_prefix": f"{kind}"}}
    return graph


def latent(server, outputs) -> torch.Tensor:
    (entry,) = outputs["save"]["latents"]
    return load_file(str(server.output_dir / entry["subfolder"] / entry["filename"]))["latent_tensor"]


KINDS = ("KSampler", "KSamplerAdvanced", "SamplerCustomAdvanced")


@pytest.fixture(scope="module")
def run_once(server):
    """The latent of each (sampler node, blending on or off) graph, run once in the session server
    whichever test asks first: the tests below check the same runs."""
    runs: dict[tuple[str, bool], torch.Tensor] = {}

    def get(kind: str, blend: bool) -> torch.Tensor:
        if (kind, blend) not in runs:
            runs[kind, blend] = latent(server, server.run(with_sampler(base_graph(blend), kind)))
        return runs[kind, blend]

    return get


@pytest.mark.parametrize("kind", KINDS)
def test_blending_runs_with_every_sampler_node(run_once, kind):
    on, off = run_once(kind, True), run_once(kind, False)
    assert on.shape == off.shape == (3, 4, 8, 8)
    changed = [r for r in range(3) if (on[r] - off[r]).abs().max() > CHANGED]
    assert changed == [0, 1, 2]  # fg, bg and blend all take part (bg_from_bl)


def test_the_three_sampler_nodes_agree(run_once):
    results = [run_once(kind, True) for kind in KINDS]
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
