"""The shipped LayerFusion workflow on the toy world's trained files, through the real server: the
checkpoint opened by ComfyUI's own loading code, the foreground LoRA by LayerFusion LoRA Apply from
layer_model, and pictures with real shapes (an object in a transparent foreground layer, the object in
the composite where the foreground's is, the background stream free of it), with the toy model's own
LayerFusion Apply settings as `make demo` uses them. What the toy world measures is in the README."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from layerfusion_dev.testnodes import toy_models
from layerfusion_dev.toy_world import scenes
from layerfusion_dev.workflows import load_api, on_toy_model, output_paths

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not (toy_models.FILES / toy_models.FG_LORA).is_file(),
                                                  reason="the toy world's files are not in the checkout (make toy-world)")]


def _near(rgb: np.ndarray, colour: str) -> np.ndarray:
    return np.abs(rgb / 255.0 - np.array(scenes.OBJECT_COLOURS[colour])).max(axis=-1) < 0.25


@pytest.mark.slow  # its semantics run in the quick tier in-process (test_toy_world_semantics); make test keeps its 4 minutes
def test_layerfusion_workflow_runs_on_the_toy_world(server):
    shutil.copyfile(toy_models.FILES / toy_models.FG_LORA, server.models_dir / "layer_model" / toy_models.FG_LORA)
    graph = on_toy_model(load_api("layerfusion"), lora_name=toy_models.FG_LORA, steps=12, apply=toy_models.APPLY_SETTINGS)
    entry = server.wait(server.queue(graph), timeout=600)
    saved = {node_id: output_paths({node_id: out}, server.output_dir) for node_id, out in entry["outputs"].items()}
    with Image.open(saved["fg_save"][0]) as img:
        fg = np.asarray(img.convert("RGBA"))
    with Image.open(saved["bg_save"][0]) as img:
        bg = np.asarray(img.convert("RGB"))
    with Image.open(saved["blend_save"][0]) as img:
        blend = np.asarray(img.convert("RGB"))
    assert fg.shape == (256, 256, 4)
    alpha = fg[..., 3] / 255.0
    red = _near(fg[..., :3], "red")
    assert red.mean() > 0.01, "the foreground holds a red object, as prompted ('a red circle')"
    assert alpha[red].mean() > alpha[~red].mean() + 0.08, "the object is opaquer than its surroundings"
    assert (alpha < 0.2).mean() > 0.3, "most of the foreground layer is transparent"
    blend_red = _near(blend, "red")
    assert blend_red.mean() > 0.01, "the composite shows the red object"
    assert (blend_red & (alpha > 0.2)).sum() > 0.5 * blend_red.sum(), "the composite's object lies where the foreground's is"
    assert bg.shape == (256, 256, 3)
    assert _near(bg, "red").mean() < 0.002, "the background stream has no object"
