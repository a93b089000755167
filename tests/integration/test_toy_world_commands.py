"""The toy world's three measurement commands end to end (`measure`, `pair_measure`, `photo_measure`; one
case at two steps, slow tier): each measures the LoRA file it is given (an experiment's, here the
committed one with its up factors zeroed, so the foreground stream is the base's), records which files it
measured in its results.json, and `pair_measure` refuses to merge a partial run into results measured on
other files."""

from __future__ import annotations

import json

import pytest

from layerfusion_dev.testnodes import toy_models
from support.toy import NEEDS_FILES

pytestmark = [pytest.mark.integration, pytest.mark.slow, NEEDS_FILES]
QUICK = ["--seeds", "1", "--steps", "2"]


@pytest.fixture(scope="module")
def no_lora(tmp_path_factory):
    """The committed LoRA with every up factor zero: LayerDiffuse's layout, no effect."""
    import safetensors.torch

    tensors = safetensors.torch.load_file(str(toy_models.FILES / toy_models.FG_LORA))
    path = tmp_path_factory.mktemp("lora") / "no_effect.safetensors"
    safetensors.torch.save_file({k: v * 0 if k.endswith("::lora::0") else v for k, v in tensors.items()}, str(path))
    return path


def results(folder) -> dict:
    return json.loads((folder / "results.json").read_text())


def test_measure_measures_the_lora_it_is_given_and_records_it(tmp_path, no_lora):
    from layerfusion_dev.toy_world import measure

    assert measure.main([*QUICK, "--toy-settings", "--out", str(tmp_path / "committed")]) == 0
    assert measure.main([*QUICK, "--toy-settings", "--lora", str(no_lora), "--out", str(tmp_path / "none")]) == 0
    committed, none = results(tmp_path / "committed"), results(tmp_path / "none")
    assert committed["files"]["lora"].startswith(toy_models.FG_LORA + " ")
    assert none["files"]["lora"].startswith("no_effect.safetensors ")
    assert committed["files"]["checkpoint"] == none["files"]["checkpoint"]
    # without the LoRA the foreground stream is the base's: its channel 3 (the toy's alpha) is not drawn
    assert none["off"][0]["alpha_iou"] != committed["off"][0]["alpha_iou"]


def test_pair_and_photo_measure_take_the_lora_and_pairs_refuse_to_mix_files(tmp_path, no_lora):
    from layerfusion_dev.toy_world import pair_measure, photo_measure

    pairs = tmp_path / "pairs"
    assert pair_measure.main([*QUICK, "--kinds", "off", "--lora", str(no_lora), "--out", str(pairs)]) == 0
    assert results(pairs)["files"]["lora"].startswith("no_effect.safetensors ")
    with pytest.raises(ValueError, match="other cases, settings or files"):
        pair_measure.main([*QUICK, "--kinds", "on", "--out", str(pairs)])
    assert pair_measure.main([*QUICK, "--kinds", "on", "--lora", str(no_lora), "--out", str(pairs)]) == 0
    assert set(results(pairs)["rows"]) == {"off", "on"}

    photo = tmp_path / "photo"
    assert photo_measure.main([*QUICK, "--lora", str(no_lora), "--out", str(photo)]) == 0
    assert results(photo)["files"]["lora"].startswith("no_effect.safetensors ") and len(results(photo)["on"]) == 1
