"""The shipped example workflows (API-format twins) and how the demo and tests adapt them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from .paths import REPO

API_DIR = REPO / "example_workflows" / "api"
TINY_LOADER = "LayerFusionTestTinySDXL"
CHECKPOINT_LOADER = "CheckpointLoaderSimple"
TINY_FLUX_LOADERS = {  # FLUX loaders in a shipped graph -> the tiny random-weight stand-in (same single output)
    "UNETLoader": ("LayerFusionTestTinyFluxModel", "Tiny random-weight FLUX model (test model)"),
    "DualCLIPLoader": ("LayerFusionTestTinyFluxClip", "Tiny random-weight FLUX CLIP (test model)"),
    "VAELoader": ("LayerFusionTestTinyFluxVae", "Tiny random-weight FLUX VAE (test model)"),
}


def load_api(name: str) -> dict[str, Any]:
    return json.loads((API_DIR / f"{name}.json").read_text())


def nodes_of(graph: dict[str, Any], class_type: str) -> list[str]:
    return [node_id for node_id, node in graph.items() if node["class_type"] == class_type]


def on_tiny_model(graph: dict[str, Any], *, size: int = 128, steps: int = 4, variant: str = "depth1") -> dict[str, Any]:
    """The same graph with every checkpoint loader replaced by the tiny random-weight SDXL loader
    (same outputs: MODEL, CLIP, VAE), and every FLUX loader (UNETLoader, DualCLIPLoader, VAELoader)
    by its tiny random-weight FLUX stand-in, at a small size and few steps."""
    graph = copy.deepcopy(graph)
    loaders = nodes_of(graph, CHECKPOINT_LOADER)
    flux_loaders = [node_id for node_id, node in graph.items() if node["class_type"] in TINY_FLUX_LOADERS]
    if not loaders and not flux_loaders:
        raise ValueError("the graph has no CheckpointLoaderSimple nor FLUX loader to stand a tiny model in for")
    for node_id in loaders:
        graph[node_id] = {"class_type": TINY_LOADER, "inputs": {"variant": variant, "seed": 0},
                          "_meta": {"title": "Tiny random-weight SDXL (test model)"}}
    for node_id in flux_loaders:
        class_type, title = TINY_FLUX_LOADERS[graph[node_id]["class_type"]]
        graph[node_id] = {"class_type": class_type, "inputs": {"seed": 0}, "_meta": {"title": title}}
    for node in graph.values():
        inputs = node["inputs"]
        for key in ("width", "height"):
            if key in inputs and not isinstance(inputs[key], list):
                inputs[key] = size
        if "steps" in inputs and not isinstance(inputs["steps"], list):
            inputs["steps"] = steps
    return graph


TOY_LOADER = "LayerFusionToyCheckpoint"
TOY_DECODE = "LayerFusionToyTransparentDecode"
TOY_PROMPTS = {"fg": "a red circle", "bg": "blue stripes background", "blend": "a red circle on blue stripes background",
               "negative": ""}


def on_toy_model(graph: dict[str, Any], *, lora_name: str, prompts: dict[str, str] | None = None, size: int = 256,
                 steps: int = 20, cfg: float = 5.0, apply: dict[str, Any] | None = None) -> dict[str, Any]:
    """The same graph on the toy world (layerfusion_dev/toy_world): its checkpoint and transparent decode
    stand in for CheckpointLoaderSimple and LayerFusion Transparent Decode, its foreground LoRA
    (``lora_name``, in the server's layer_model folder) for LayerDiffuse's, with prompts of its grammar;
    ``apply`` overrides LayerFusion Apply's inputs."""
    graph = copy.deepcopy(graph)
    if not nodes_of(graph, CHECKPOINT_LOADER):
        raise ValueError("the graph has no CheckpointLoaderSimple to stand the toy model in for")
    for node_id in nodes_of(graph, CHECKPOINT_LOADER):
        graph[node_id] = {"class_type": TOY_LOADER, "inputs": {"ckpt_name": "toy_world.safetensors"},
                          "_meta": {"title": "Toy world checkpoint (dev model)"}}
    for node_id in nodes_of(graph, "LayerFusionTransparentDecode"):
        old = graph[node_id]["inputs"]
        graph[node_id] = {"class_type": TOY_DECODE, "inputs": {"samples": old["samples"], "images": old["images"]},
                          "_meta": {"title": "Toy world transparent decode"}}
    for node_id in nodes_of(graph, "LayerFusionLoraApply"):
        graph[node_id]["inputs"]["lora_name"] = lora_name
    for node_id in nodes_of(graph, "LayerFusionConditioning"):
        graph[node_id]["inputs"].update(prompts or TOY_PROMPTS)
    for node_id in nodes_of(graph, "LayerFusionApply"):
        graph[node_id]["inputs"].update(apply or {})
    for node in graph.values():
        inputs = node["inputs"]
        for key, value in (("width", size), ("height", size), ("steps", steps), ("cfg", cfg)):
            if key in inputs and not isinstance(inputs[key], list):
                inputs[key] = value
    return graph


def with_checkpoint(graph: dict[str, Any], checkpoint: str) -> dict[str, Any]:
    graph = copy.deepcopy(graph)
    for node_id in nodes_of(graph, CHECKPOINT_LOADER):
        graph[node_id]["inputs"]["ckpt_name"] = checkpoint
    return graph


def layer_model_files(graph: dict[str, Any]) -> list[str]:
    """The LayerDiffuse files (models/layer_model) a graph names."""
    names = []
    for node in graph.values():
        for key in ("lora_name", "decoder_name", "encoder_name", "model_name"):
            value = node["inputs"].get(key)
            if isinstance(value, str) and value.startswith(("layer_", "vae_transparent")) and value not in names:
                names.append(value)
    return names


def saved_images(outputs: dict[str, Any]) -> list[dict[str, str]]:
    """Every image file a finished prompt's outputs list (``filename``, ``subfolder``, ``type``)."""
    return [image for node_out in outputs.values() for image in node_out.get("images", [])]


def output_paths(outputs: dict[str, Any], output_dir: Path) -> list[Path]:
    return [output_dir / image["subfolder"] / image["filename"] for image in saved_images(outputs) if image["type"] == "output"]
