"""`make toy-world`'s own code (layerfusion_dev/toy_world/train.py) at two steps a stage on 64 scenes:
the same seed gives the same bytes, a run stopped part-way resumes from its saved state to those same
bytes, what it writes loads through ComfyUI's loading code and the pack's LoRA loader, and the LoRA-only
experiment (``--base-from``) writes the LoRA alone with its settings recorded and weights the alpha's
loss as a naive implementation does."""

from __future__ import annotations

import json

import pytest
import torch

from layerfusion_dev.testnodes import toy_models
from support.toy import NEEDS_FILES

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # three short trainings: about a minute


def train_args(tmp_path, out, *extra: str) -> list[str]:
    return ["--scenes", "64", "--base-steps", "2", "--fg-steps", "2", "--cache", str(tmp_path / "cache"),
            "--out", str(out), *extra]


def test_training_is_seeded_and_a_stopped_run_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    import comfy.model_base

    from layerfusion.layerfusion_core.patching.model_info import unet_shapes
    from layerfusion.layerfusion_core.weights.lora_files import load_lora
    from layerfusion_dev.toy_world import train

    first = tmp_path / "first"
    assert train.main(train_args(tmp_path / "a", first)) == 0
    hashes = json.loads((first / "hashes.json").read_text())
    assert hashes == {name: train.sha256(first / name) for name in (toy_models.CHECKPOINT, toy_models.FG_LORA)}

    real_batch, calls = train.base_batch, []

    def stops_at_the_second_step(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("stopped by the test")
        return real_batch(*args)

    monkeypatch.setattr(train, "SAVE_EVERY", 1)
    monkeypatch.setattr(train, "base_batch", stops_at_the_second_step)
    again = tmp_path / "again"
    with pytest.raises(KeyboardInterrupt):
        train.main(train_args(tmp_path / "b", again))
    saved = list((tmp_path / "b" / "cache").glob("base_0_*_state.safetensors"))
    assert len(saved) == 1 and not (again / toy_models.CHECKPOINT).exists()
    resumed = []
    monkeypatch.setattr(train, "base_batch", lambda *args: resumed.append(1) or real_batch(*args))
    assert train.main(train_args(tmp_path / "b", again)) == 0
    assert len(resumed) == 1  # the base stage went on from its saved step 1, not from the start
    assert json.loads((again / "hashes.json").read_text()) == hashes

    model, _clip, _vae = toy_models.load_checkpoint(first / toy_models.CHECKPOINT)
    assert model.model.model_type == comfy.model_base.ModelType.V_PREDICTION
    loaded = load_lora(str(first / toy_models.FG_LORA), model.model, unet_shapes(model))
    tensors = train.LoRA(model.model.diffusion_model, train.LORA_RANK, 0).layerdiffuse_tensors()
    assert loaded.patched_weights == len(loaded.low_rank) == len(tensors) // 2  # every layer of the layout, as low rank


@NEEDS_FILES
def test_base_from_trains_the_lora_alone_and_records_what_it_changed(tmp_path):
    from layerfusion_dev.toy_world import train

    out = tmp_path / "lora"
    argv = [*train_args(tmp_path, out), "--base-from", str(toy_models.FILES / toy_models.CHECKPOINT),
            "--fg-lr", "0.01", "--fg-alpha-weight", "4", "--fg-seed", "3"]
    assert train.main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == [toy_models.FG_LORA]
    meta = toy_models.read_metadata(out / toy_models.FG_LORA)["toy_world"]
    assert meta["base_from"] == toy_models.CHECKPOINT and meta["fg_lr"] == 0.01 and meta["fg_alpha_weight"] == 4.0
    assert meta["fg_seed"] == 3 and meta["seed"] == 0
    assert meta["base_steps"] == 0 and meta["fg_steps"] == 2


@NEEDS_FILES
def test_the_alpha_weight_scales_channel_3s_share_of_the_loss_as_a_naive_loss_does():
    from layerfusion_dev.toy_world import train

    model, clip, _vae = toy_models.load_checkpoint(toy_models.FILES / toy_models.CHECKPOINT)
    pictures = torch.rand(2, 4, 64, 64)
    x0 = toy_models.transparent_latent(pictures)
    context, y = train.Conditioner(model, clip).batch(["a red circle", "a blue square"])

    def generator():
        return torch.Generator().manual_seed(7)

    with torch.no_grad():
        weighted = train.v_loss(model, x0, context, y, generator(), alpha_weight=4.0).item()
        gen = generator()  # the naive loss: the same draws, in the same order, as v_loss makes them
        sigmas = toy_models.sigma_table(model)
        sigma = sigmas[torch.randint(0, len(sigmas), (2,), generator=gen)]
        noise = torch.randn(x0.shape, generator=gen)
        denoised = model.model.apply_model(x0 + noise * sigma.view(-1, 1, 1, 1), sigma, c_crossattn=context, y=y)
        naive = 0.0
        for i in range(2):
            per_channel = [((denoised[i, c] - x0[i, c]) ** 2).mean().item() for c in range(4)]
            naive += (sum(per_channel[:3]) + 4.0 * per_channel[3]) / 4 * ((sigma[i] ** 2 + 1) / sigma[i] ** 2).item()
        naive /= 2
    assert weighted == pytest.approx(naive, rel=1e-4)
    assert weighted > train.v_loss(model, x0, context, y, generator()).item()  # alpha's error counts more
