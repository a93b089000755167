"""The shipped example workflows: every API twin runs through the real server on the tiny model,
and every UI workflow is its twin, with node types and widget values ComfyUI accepts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layerfusion_dev.host import import_comfy
from layerfusion_dev.paths import PACK_NAME
from layerfusion_dev.ui_workflows import ui_to_api, widget_problems
from layerfusion_dev.workflows import API_DIR, on_tiny_model, output_paths
from support.layered_readers import READERS

TWINS = sorted(p.stem for p in API_DIR.glob("*.json"))
TRANSPARENT_SOURCES = {"LayerFusionTransparentDecode"}
NATIVE_LAYER_NODES = {"ImageCompositor", "AddLayer"}  # ComfyUI's own, in recent versions only
MODEL_DIRECTORIES = ("checkpoints", "layer_model", "diffusion_models", "text_encoders", "vae", "loras")
FLUX_FILE_INPUTS = {"UNETLoader": ["unet_name"], "DualCLIPLoader": ["clip_name1", "clip_name2"], "VAELoader": ["vae_name"],
                    "LoraLoaderModelOnly": ["lora_name"]}


def test_all_four_workflows_ship():
    assert TWINS == ["flux_transparent", "layerdiffuse_bg_blend_fg", "layerdiffuse_fg_blend_bg", "layerfusion",
                     "layerfusion_bg_style_lora", "layerfusion_create_layered_image", "layerfusion_layered_file",
                     "layerfusion_own_background", "layerfusion_two_objects", "transparent_foreground", "transparent_img2img"]
    assert all((API_DIR.parent / f"{name}.json").is_file() for name in TWINS)


def put_input_image(server) -> None:
    rgba = np.zeros((96, 96, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 120, 40)
    rgba[24:72, 32:64, 3] = 255
    Image.fromarray(rgba, "RGBA").save(server.base / "input" / "transparent_input.png")
    photo = np.random.default_rng(0).integers(0, 256, (80, 112, 3), dtype=np.uint8)  # another size: the workflow scales it
    Image.fromarray(photo, "RGB").save(server.base / "input" / "photo.png")


def skip_without_native_layer_nodes(server, graph: dict) -> None:
    """Skip, naming the node, a graph that uses ComfyUI's own layer nodes on a host without them
    (0.3.75); any other missing node still fails the test."""
    missing = {node["class_type"] for node in graph.values()} - set(server.object_info())
    if missing and missing <= NATIVE_LAYER_NODES:
        version = server.get_json("/system_stats").get("system", {}).get("comfyui_version", "this version")
        pytest.skip(f"needs ComfyUI's own {', '.join(sorted(missing))} (Create Layered Image), which ComfyUI {version} lacks")


@pytest.fixture(scope="module")
def twin_run(server):
    """Each API twin run once on the session server (64 px, 3 steps), whichever test asks first:
    (graph, its history entry, what the run wrote into the server's log); the tests below check the same runs."""
    runs: dict[str, tuple[dict, dict, str]] = {}

    def run(name: str) -> tuple[dict, dict, str]:
        if name not in runs:
            put_input_image(server)
            graph = on_tiny_model(json.loads((API_DIR / f"{name}.json").read_text()), size=64, steps=3)
            skip_without_native_layer_nodes(server, graph)
            start = len(server.log_text())
            entry = server.wait(server.queue(graph))
            runs[name] = (graph, entry, server.log_text()[start:])
        return runs[name]

    return run


# "layerfusion" runs on the same server, with stricter checks, in test_server's demo-graph test: slow tier here
@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name == "layerfusion" else name for name in TWINS])
def test_api_twin_runs_and_saves_its_declared_outputs(server, twin_run, name):
    graph, entry, _log = twin_run(name)
    outputs = entry["outputs"]
    savers = {node_id for node_id, node in graph.items() if node["class_type"] == "SaveImage"}
    assert savers and savers <= set(outputs)
    for node_id in savers:
        source = graph[graph[node_id]["inputs"]["images"][0]]["class_type"]
        paths = output_paths({node_id: outputs[node_id]}, server.output_dir)
        assert paths, f"{name}: {node_id} saved nothing"
        for path in paths:
            with Image.open(path) as img:
                if source in TRANSPARENT_SOURCES:
                    assert img.mode == "RGBA", f"{name}: {path.name} has no alpha channel"
                    assert img.size == (64, 64) or name == "transparent_img2img"
    for node_id in (node_id for node_id, node in graph.items() if node["class_type"] == "LayerFusionSaveLayers"):
        files = outputs[node_id]["layerfusion_files"]
        kinds = graph[node_id]["inputs"]["format"].split(" and ")
        assert sorted(f["format"] for f in files) == sorted(kinds), files
        for entry in files:  # each written file, re-read by an independent reader: the layers in their order
            layers, _merged, size = READERS[entry["format"]](server.output_dir / entry["subfolder"] / entry["filename"])
            assert size == (64, 64)
            lit = graph[node_id]["inputs"].get("light_and_shadow", False)
            k = graph[node_id]["inputs"].get("foregrounds", 1)
            objects = ["foreground"] if k == 1 else [f"foreground {i}" for i in range(1, k + 1)]
            masks = ["mask"] if k == 1 else [f"mask {i}" for i in range(1, k + 1)]
            assert [(layer.name, layer.visible) for layer in layers] == [
                ("background", True), *([("shadow", True), ("light", True)] if lit else []),
                *((name, True) for name in objects), ("composite", False), *((name, False) for name in masks)]
            for foreground in layers[3 if lit else 1:][:k]:
                assert foreground.pixels[..., 3].min() < 255  # each foreground layer carries its transparency


@pytest.mark.parametrize("name", TWINS)
def test_ui_workflow_is_its_twin_with_accepted_values(server, name):
    """Against the host's /object_info; where the host lacks ComfyUI's own layer nodes (0.3.75), their
    schemas emulated from current ComfyUI's source stand in (layerfusion_dev.native_nodes)."""
    import_comfy()
    from layerfusion_dev.native_nodes import object_info_for_missing

    info = server.object_info()
    info = {**object_info_for_missing(info), **info}
    ui = json.loads((API_DIR.parent / f"{name}.json").read_text())
    missing = {node["type"] for node in ui["nodes"]} - set(info)
    assert not missing, f"{name}: node types not in /object_info: {missing}"
    twin = json.loads((API_DIR / f"{name}.json").read_text())
    ids = {node_id: str(i + 1) for i, node_id in enumerate(twin)}
    expected = {ids[k]: {"class_type": v["class_type"],
                         "inputs": {n: ([ids[x[0]], x[1]] if isinstance(x, list) else x) for n, x in v["inputs"].items()}}
                for k, v in twin.items()}
    rebuilt = ui_to_api(ui, info)
    assert rebuilt == expected
    offered = {m["name"] for node in ui["nodes"] for m in node.get("properties", {}).get("models", [])}
    assert widget_problems(rebuilt, info, offered) == []
    downloads = [m for node in ui["nodes"] for m in node.get("properties", {}).get("models", [])]
    assert all(m["url"].startswith("https://huggingface.co/") and m["directory"] in MODEL_DIRECTORIES for m in downloads)
    assert all(m["url"].endswith("/" + m["name"]) for m in downloads)  # the frontend saves the download under this name


def test_workflows_are_in_the_template_browser(server):
    templates = server.get_json("/workflow_templates")
    assert sorted(templates[PACK_NAME]) == TWINS


def test_the_flux_workflow_is_flux_dev_with_comfyuis_lora_loader_and_the_flux_decoder(server):
    """Its structure: ComfyUI's own FLUX loaders and LoRA loader, a 16-channel latent, cfg 1 with
    FluxGuidance, the FLUX decoder file; every downloadable model file has a properties.models entry."""
    api = json.loads((API_DIR / "flux_transparent.json").read_text())
    by_type = {node["class_type"]: node for node in api.values()}
    assert by_type["DualCLIPLoader"]["inputs"]["type"] == "flux"
    assert by_type["LoraLoaderModelOnly"]["inputs"]["lora_name"] == "layerlora.safetensors"
    assert by_type["KSampler"]["inputs"]["cfg"] == 1.0 and by_type["KSampler"]["inputs"]["model"][0] == "layer_lora"
    assert api[by_type["KSampler"]["inputs"]["latent_image"][0]]["class_type"] == "EmptySD3LatentImage"
    assert api[by_type["KSampler"]["inputs"]["positive"][0]]["class_type"] == "FluxGuidance"
    assert by_type["LayerFusionTransparentDecode"]["inputs"]["decoder_name"] == "vae_transparent_decoder_flux.safetensors"
    ui = json.loads((API_DIR.parent / "flux_transparent.json").read_text())
    entries = {m["name"]: m for node in ui["nodes"] for m in node.get("properties", {}).get("models", [])}
    files = {by_type[t]["inputs"][i] for t, inputs in FLUX_FILE_INPUTS.items() for i in inputs}
    assert set(entries) == files  # the converted decoder has none: no URL gives it (see the README)
    assert {entries[f]["directory"] for f in files} == {"diffusion_models", "text_encoders", "vae", "loras"}
    assert entries["layerlora.safetensors"]["url"].startswith("https://huggingface.co/RedAIGC/Flux-version-LayerDiffuse/")


def test_the_flux_workflow_applies_every_lora_key_on_the_tiny_flux_model(server, twin_run):
    from safetensors import safe_open

    with safe_open(str(server.models_dir / "loras" / "layerlora.safetensors"), "pt") as f:
        assert len(list(f.keys())) > 10  # diffusers-format lora_A/lora_B pairs on the tiny FLUX model's layers
    graph, entry, log = twin_run("flux_transparent")  # the twin's own run
    cached = {node for kind, data in entry["status"]["messages"] if kind == "execution_cached" for node in data["nodes"]}
    assert graph["layer_lora"]["class_type"] == "LoraLoaderModelOnly" and "layer_lora" not in cached  # it loaded the LoRA
    assert "lora key not loaded" not in log


@pytest.mark.slow  # two editor starts
def test_the_two_object_workflows_files_open_in_gimp_and_krita_with_both_objects(server, twin_run, tmp_path):
    """The K = 2 workflow's PSD and OpenRaster files, flattened by GIMP and Krita, are the files' own
    merged image (every layer read, the two objects included) within 1/255."""
    from support.editors import gimp_flatten, gimp_missing, krita_flatten, krita_missing

    graph, entry, _log = twin_run("layerfusion_two_objects")
    (node_id,) = [node_id for node_id, node in graph.items() if node["class_type"] == "LayerFusionSaveLayers"]
    files = {Path(f["filename"]).suffix[1:]: server.output_dir / f["subfolder"] / f["filename"]
             for f in entry["outputs"][node_id]["layerfusion_files"]}
    installed, opened = [], []
    for editor, missing, flatten in (("gimp", gimp_missing, gimp_flatten), ("krita", krita_missing, krita_flatten)):
        if missing():
            continue
        installed.append(editor)
        (tmp_path / editor).mkdir()
        flat = flatten(list(files.values()), tmp_path / editor)
        for kind, path in files.items():
            layers, merged, _size = READERS[kind](path)
            assert [layer.name for layer in layers if layer.name.startswith("foreground")] == ["foreground 1", "foreground 2"]
            if isinstance(flat[path], str):  # a format this editor cannot open here (GIMP 2.10 on Debian: no OpenRaster)
                continue
            error = np.abs(flat[path].astype(int) - merged[..., :3].astype(int)).max()
            assert error <= 1, f"{editor} {kind}: off by {error}/255"
            opened.append((editor, kind))
    if not installed:
        pytest.skip("neither GIMP nor Krita is installed (make editors)")
    assert {editor for editor, _ in opened} == set(installed)  # each installed editor opened at least one of the files
