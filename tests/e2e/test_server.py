"""The pack inside a real ComfyUI server: loaded, listed, and running graphs through /prompt."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from PIL import Image

from layerfusion_dev.comfy_server import ComfyServer, ServerError
from layerfusion_dev.paths import PACK_NAME, REPO
from layerfusion_dev.workflows import load_api, on_tiny_model, output_paths, saved_images

PACK_NODES = {
    "LayerFusionConditioning", "LayerFusionEmptyLatent", "LayerFusionSplit", "LayerFusionApply", "LayerFusionMasks",
    "LayerFusionLoraApply", "LayerFusionTransparentDecode", "LayerFusionTransparentEncode",
    "LayerFusionLayerDiffuseCond", "LayerFusionFlattenAlpha", "LayerFusionRecompose", "LayerFusionSaveLayers",
    "LayerFusionLayers", "LayerFusionBackground", "LayerFusionPlacement",
}


def test_pack_nodes_are_in_object_info(server):
    info = server.object_info()
    assert set(info) >= PACK_NODES
    pack_ids = {k for k in info if k.startswith("LayerFusion") and not k.startswith(("LayerFusionTest", "LayerFusionToy"))}  # dev nodes
    assert pack_ids == PACK_NODES  # every shipped node id, and no other (ids never change once shipped)
    for node_id in PACK_NODES:
        node = info[node_id]
        assert node["category"] == "LayerFusion"
        assert node["display_name"].startswith("LayerFusion ")
        assert node["description"]
        assert PACK_NAME in node["python_module"]
        for section in ("required", "optional"):
            for name, spec in node["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_pack_imported_without_failure(server):
    assert server.import_failures() == []
    loaded = [line for line in server.log_text().splitlines() if line.rstrip().endswith(f"custom_nodes/{PACK_NAME}")]
    assert loaded and "IMPORT FAILED" not in loaded[0]


def test_demo_graph_runs_on_the_tiny_model(server):
    outputs = server.run(on_tiny_model(load_api("layerfusion"), size=128))
    images = saved_images(outputs)
    assert sorted(img["filename"].split("_")[0] for img in images) == ["bg", "blend", "fg", "masks"]
    pixels = []
    for path in output_paths(outputs, server.output_dir):
        with Image.open(path) as img:
            if path.name.startswith("masks"):  # structure, soft and hard side by side
                assert img.size == (3 * 128, 128)
                continue
            assert img.size == (128, 128)
            assert img.mode == ("RGBA" if path.name.startswith("fg") else "RGB"), path.name
            pixels.append(img.convert("RGB").tobytes())
    assert len(set(pixels)) == 3, "fg, bg and blend come from different noise and prompts and must differ"
    fg_entry = next(img for img in images if img["filename"].startswith("fg"))
    with Image.open(io.BytesIO(server.view(fg_entry))) as served:  # the same file through /view
        assert served.size == (128, 128) and served.mode == "RGBA"


def test_layers_node_runs_on_this_host_and_shows_its_layers(server):
    """LayerFusion Layers on a host with or without ComfyUI's own layer nodes: its LAYERS type is
    listed by name, and the set's layers come out as one IMAGE batch and as previews on the node."""
    info = server.object_info()
    assert info["LayerFusionLayers"]["output"] == ["LAYERS", "IMAGE"]
    graph = {
        "bg": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x336699}},
        "colour": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0xFF8800}},
        "alpha": {"class_type": "SolidMask", "inputs": {"value": 0.25, "width": 64, "height": 64}},
        "fg": {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["colour", 0], "alpha": ["alpha", 0]}},
        "layers": {"class_type": "LayerFusionLayers", "inputs": {"foreground": ["fg", 0], "background": ["bg", 0], "set_index": 0}},
        "preview": {"class_type": "PreviewImage", "inputs": {"images": ["layers", 1]}},
    }
    outputs = server.run(graph)
    assert len(outputs["preview"]["images"]) == 2 and len(outputs["layers"]["images"]) == 2
    with Image.open(io.BytesIO(server.view(outputs["layers"]["images"][1]))) as shown:  # the foreground, transparent
        assert shown.mode == "RGBA" and shown.getpixel((10, 10))[3] in (64, 191)


def test_split_refuses_a_batch_that_is_not_three_streams(server):
    graph = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 4}},
        "2": {"class_type": "LayerFusionSplit", "inputs": {"latent": ["1", 0]}},
        "3": {"class_type": "LayerFusionTestTinySDXL", "inputs": {"variant": "depth1", "seed": 0}},
        "4": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["3", 2]}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }
    with pytest.raises(ServerError, match=r"LayerFusion Split: input 'latent': has 4 rows, expected a multiple of 3"):
        server.run(graph)


@pytest.mark.slow  # a ComfyUI start of its own (the session server shows the pack imports, with the test nodes)
def test_quick_test_for_ci_loads_the_pack(tmp_path):
    host = ComfyServer(test_nodes=False, base_dir=tmp_path)
    assert host.quick_test() == 0
    lines = host.log_text().splitlines()
    assert any(line.rstrip().endswith(f"custom_nodes/{PACK_NAME}") and "seconds" in line for line in lines), host.log_tail()
    assert host.import_failures() == []


@pytest.mark.slow  # a ComfyUI start of its own, and a check of the test harness rather than the pack
def test_harness_fails_when_a_pack_fails_to_import(tmp_path):
    broken = tmp_path / "custom_nodes" / "broken_pack"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('this pack is broken on purpose')\n")
    host = ComfyServer(test_nodes=False, base_dir=tmp_path)
    with pytest.raises(ServerError, match="broken_pack"):
        host.start()
    assert host.process is None  # stopped


@pytest.mark.slow  # a server of its own, and the same workflow test_demo_graph_runs_on_the_tiny_model runs
def test_demo_script_writes_pngs(tmp_path):
    out = tmp_path / "output"
    done = subprocess.run([sys.executable, "-m", "layerfusion_dev.demo", "--tiny", "--output", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tiny random-weight model" in done.stdout
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == 6  # the LayerFusion workflow's four, the own-background workflow's foreground and composite
    assert sum(p.name.startswith("photo_") for p in pngs) == 2
    with Image.open(next(p for p in pngs if p.name.startswith("fg"))) as fg:
        assert fg.mode == "RGBA"
    assert all(str(p) in done.stdout for p in pngs)
