"""The vendored copy of the team's LayerDiffuse tensor layout is the team's file, unchanged."""

from __future__ import annotations

import json

import pytest

from layerfusion_dev.paths import REPO

VENDORED = REPO / "layerfusion_dev" / "data" / "layerdiffuse_tensors.json"
SHARED = REPO.parent / "shared" / "data" / "layerdiffuse_tensors.json"


def test_vendored_layout_has_the_real_file_sizes():
    files = json.loads(VENDORED.read_text())["files"]
    assert len(files["layer_xl_transparent_attn.safetensors"]) == 1120  # 560 weights x (up, down)
    assert len(files["vae_transparent_encoder.safetensors"]) == 18


@pytest.mark.skipif(not SHARED.is_file(), reason="the team's shared/ folder is not beside this checkout")
def test_vendored_layout_matches_shared():
    assert json.loads(VENDORED.read_text()) == json.loads(SHARED.read_text())
