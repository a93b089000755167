"""LayerFusion LoRA Apply's run-time branch LoRA on the real ComfyUI sampler (tiny SDXL model).

The tolerance that would have caught the existing pack's silent no-op: a LoRA at weight 1 must
move its rows' final latents by more than CHANGED (the random stand-in moves them by ~10)."""

from __future__ import annotations

import pytest
import torch

from layerfusion.layerfusion_core.layout.rows import BatchLayoutError, Branch
from layerfusion.layerfusion_core.patching.branch_lora import apply_branch_lora, branch_loras
from layerfusion.layerfusion_core.patching.calls import enable_layered_batch
from layerfusion.layerfusion_core.patching.options import LAYOUT_OPTION, ROWS_WRAPPER_KEY
from layerfusion.layerfusion_core.weights import lora_files, safetensors_io
from layerfusion_dev.testnodes import layout, standins, tiny_sdxl
from support.sampling import changed_rows, identical_rows, sample

CHANGED = 1e-2
ROWS = 6  # two layered sets
BRANCH_ROWS = {Branch.FG: [0, 3], Branch.BG: [1, 4], Branch.BLEND: [2, 5], Branch.ALL: list(range(ROWS))}


@pytest.fixture(scope="module")
def unet():
    return tiny_sdxl.build_unet("depth1", seed=0)


@pytest.fixture(scope="module")
def files(unet, tmp_path_factory):
    folder = tmp_path_factory.mktemp("layer_model")
    paths = standins.write_standins(folder, standins.unet_shapes(unet), rank=4, decoder=False)  # nothing here decodes
    second = folder / "second_attn.safetensors"
    from safetensors.torch import save_file

    save_file(standins.attn_lora_standin(standins.unet_shapes(unet), rank=4, seed=7), str(second))
    return {**{k: str(v) for k, v in paths.items()}, "second": str(second)}


@pytest.fixture(scope="module")
def attn(unet, files):
    return lora_files.load_lora(files[standins.ATTN_FILE], unet.model)


@pytest.fixture(scope="module")
def layered(unet):
    return enable_layered_batch(unet)


@pytest.fixture(scope="module")
def base(layered):
    return sample(layered, ROWS)


def test_layout_flag_of_the_test_node_is_the_packs():
    assert layout.LAYOUT_OPTION == LAYOUT_OPTION


@pytest.mark.parametrize("branch", list(Branch))
def test_patch_changes_its_branch_rows_and_no_other(layered, attn, base, branch):
    out = sample(apply_branch_lora(layered, attn, branch, 1.0), ROWS)
    assert changed_rows(out, base, CHANGED) == BRANCH_ROWS[branch]
    assert identical_rows(out, base) == [r for r in range(ROWS) if r not in BRANCH_ROWS[branch]]


def test_weight_zero_is_the_unpatched_model_bit_for_bit(layered, attn, base):
    for branch in (Branch.FG, Branch.ALL):
        assert torch.equal(sample(apply_branch_lora(layered, attn, branch, 0.0), ROWS), base)


def test_the_input_model_is_never_changed(unet, attn):
    before = sample(unet, 3)
    patched = apply_branch_lora(unet, attn, Branch.FG, 1.0)
    assert changed_rows(sample(patched, 3), before, CHANGED) == [0, 1, 2]
    assert unet.object_patches == {} and unet.injections == {}
    assert not unet.get_wrappers("diffusion_model", ROWS_WRAPPER_KEY)
    assert torch.equal(sample(unet, 3), before)
    assert not any(m._forward_hooks for m in unet.model.modules())  # the patched clone's hooks were ejected


def test_clones_share_the_branch_lora_and_its_factors(layered, attn):
    """ComfyUI deep-copies model_options on every clone: the LoRA's factors must not be copied with them."""
    patched = apply_branch_lora(layered, attn, Branch.FG, 1.0)
    (mine,) = branch_loras(patched)
    (theirs,) = branch_loras(patched.clone().clone())
    assert theirs is mine and patched.clone().injections.keys() == {mine.key}


def test_the_factors_are_placed_on_the_call_device_once_and_let_go_when_unloaded(layered, attn):
    """Not copied to the device at every call: one placed copy per (device, dtype), kept while the
    model is loaded (ComfyUI ejects and re-injects the hooks around parts of every run), dropped
    when ComfyUI unloads the model."""
    import comfy.model_management

    patched = apply_branch_lora(layered, attn, Branch.FG, 1.0)
    (lora,) = branch_loras(patched)
    sample(patched, ROWS)
    placed = {path: dict(f.placed) for path, f in lora.layers.items()}
    assert all(len(p) == 1 for p in placed.values()), sorted({len(p) for p in placed.values()})
    sample(patched, ROWS)  # still loaded: the same copies serve the next run
    assert all(f.placed[k][0] is placed[path][k][0] for path, f in lora.layers.items() for k in f.placed)
    factors = next(iter(lora.layers.values()))
    x = torch.randn(2, factors.down.shape[1], dtype=torch.float64)  # another dtype: a real copy
    factors.delta(x)
    copy = factors.placed[(x.device, torch.float64)][0]
    assert copy is not factors.down and copy.dtype == torch.float64
    factors.delta(x)
    assert factors.placed[(x.device, torch.float64)][0] is copy
    comfy.model_management.unload_all_models()
    assert all(not f.placed for f in lora.layers.values())


def test_plain_batch_fg_patches_every_row_and_bg_is_refused(unet, attn):
    before = sample(unet, 2)
    assert changed_rows(sample(apply_branch_lora(unet, attn, Branch.FG, 1.0), 2), before, CHANGED) == [0, 1]
    with pytest.raises(BatchLayoutError, match="branch 'bg' needs a LayerFusion batch"):
        sample(apply_branch_lora(unet, attn, Branch.BG, 1.0), 2)


def test_layered_model_refuses_a_batch_that_is_not_three_streams(layered, attn):
    with pytest.raises(BatchLayoutError, match="this latent batch has 2 rows"):
        sample(apply_branch_lora(layered, attn, Branch.FG, 1.0), 2)


def test_fg_rows_equal_the_lora_merged_into_the_weights(layered, attn, base, files):
    weight = 0.7
    patched = sample(apply_branch_lora(layered, attn, Branch.FG, weight), ROWS)
    merged_model = tiny_sdxl.build_unet("depth1", seed=0)  # an independent copy, merged by hand
    tensors = safetensors_io.read_safetensors(files[standins.ATTN_FILE])
    params = dict(merged_model.model.named_parameters())
    with torch.no_grad():
        for key in {k.split("::")[0] for k in tensors}:
            up, down = tensors[f"{key}::lora::0"].float(), tensors[f"{key}::lora::1"].float()
            params[key].add_(weight * up @ down)
    merged = sample(enable_layered_batch(merged_model), ROWS)
    fg = BRANCH_ROWS[Branch.FG]
    assert changed_rows(patched, base, CHANGED) == fg
    scale = merged[fg].abs().max().item()
    assert torch.allclose(patched[fg], merged[fg], rtol=1e-4, atol=1e-4 * scale), (patched[fg] - merged[fg]).abs().max()


def test_chained_loras_stack(layered, attn, files, unet):
    second = lora_files.load_lora(files["second"], unet.model)
    fg_only = sample(apply_branch_lora(layered, attn, Branch.FG, 1.0), ROWS)
    bg_only = sample(apply_branch_lora(layered, second, Branch.BG, 1.0), ROWS)
    both = apply_branch_lora(apply_branch_lora(layered, attn, Branch.FG, 1.0), second, Branch.BG, 1.0)
    out = sample(both, ROWS)
    assert torch.equal(out[[0, 3]], fg_only[[0, 3]]) and torch.equal(out[[1, 4]], bg_only[[1, 4]])
    twice = apply_branch_lora(apply_branch_lora(layered, attn, Branch.FG, 0.5), attn, Branch.FG, 0.5)
    once = sample(apply_branch_lora(layered, attn, Branch.FG, 1.0), ROWS)
    assert torch.allclose(sample(twice, ROWS), once, rtol=1e-4, atol=1e-3)


def test_comfy_weight_patches_still_apply_under_a_branch_patch(layered, attn, unet):
    """A ComfyUI weight patch (what LoraLoader adds) on a layer that also carries a branch LoRA."""
    key = "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"
    delta = torch.randn(unet.model.state_dict()[key].shape, generator=torch.Generator().manual_seed(5)) * 0.5
    weight_only = layered.clone()
    weight_only.add_patches({key: ("diff", (delta,))}, 1.0)
    both = apply_branch_lora(weight_only, attn, Branch.BG, 1.0)
    reference = sample(weight_only, ROWS)
    assert changed_rows(reference, sample(layered, ROWS), CHANGED) == list(range(ROWS))
    out = sample(both, ROWS)
    assert torch.equal(out[[0, 2, 3, 5]], reference[[0, 2, 3, 5]])
    assert changed_rows(out, reference, CHANGED) == [1, 4]


def test_every_weight_of_the_layerdiffuse_file_is_patched_and_runs_on_full_depth(tmp_path):
    full = tiny_sdxl.build_unet("full", seed=0)
    from safetensors.torch import save_file

    path = tmp_path / standins.ATTN_FILE
    save_file(standins.attn_lora_standin(standins.unet_shapes(full), rank=2), str(path))
    lora = lora_files.load_lora(str(path), full.model)
    patched = apply_branch_lora(full, lora, Branch.FG, 1.0)
    targets = {k.split("::")[0].removesuffix(".weight") for k in standins.layout()[standins.ATTN_FILE]}
    (branch_lora,) = branch_loras(patched)
    assert len(branch_lora.layers) == 560 and set(branch_lora.layers) == targets
    called = set()
    hooks = [full.get_model_object(name).register_forward_hook(lambda mod, args, out, name=name: called.add(name))
             for name in branch_lora.layers]
    try:
        sample(patched, 1, steps=1, cfg=1.0)
    finally:
        for h in hooks:
            h.remove()
    assert called == targets


def test_a_lora_applied_while_another_patched_clone_is_loaded_uses_the_checkpoints_weights(layered, attn, base, unet):
    """Regression: ComfyUI keeps the last model's weight patches applied between runs; a branch patch
    made then must not keep that patched weight once the other clone is unloaded."""
    key = "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"
    delta = torch.randn(unet.model.state_dict()[key].shape, generator=torch.Generator().manual_seed(6)) * 0.5
    other = layered.clone()
    other.add_patches({key: ("diff", (delta,))}, 1.0)
    sample(apply_branch_lora(other, attn, Branch.BG, 1.0), ROWS)  # leaves `other` patched in the model
    made_now = apply_branch_lora(layered, attn, Branch.FG, 1.0)
    sample(other, ROWS)
    out = sample(made_now, ROWS)
    assert identical_rows(out, base) == [1, 2, 4, 5]
