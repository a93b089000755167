"""LayerFusion Apply on the real ComfyUI sampler with the tiny SDXL model: invariants of docs/method.md."""

from __future__ import annotations

import pytest
import torch

from layerfusion.layerfusion_core.fusion.run import Phase
from layerfusion.layerfusion_core.layout.rows import BatchLayoutError, Branch
from layerfusion.layerfusion_core.patching.branch_lora import apply_branch_lora, branch_loras
from layerfusion.layerfusion_core.patching.calls import enable_layered_batch
from layerfusion.layerfusion_core.patching.layerfusion import fusion_patch
from layerfusion.layerfusion_core.patching.options import EOS_KEY
from layerfusion.layerfusion_core.weights import lora_files
from layerfusion.nodes.fusion import LayerFusionApply, LayerFusionConditioning
from layerfusion_dev.testnodes import standins, tiny_sdxl
from support.sdxl import SDXL_KEYS

FG, BG, BL = 0, 1, 2
STEPS = 4
ALL_OFF = dict(blend_blend=False, blend_fg=False, blend_bg=False)


def apply(model, **options):
    args = dict(d=10.0, prior_at=0.8, prior_mode="prior_pass", blend_start=0.0, blend_end=1.0, bg_mode="bg_from_bl",
                blend_blend=True, blend_fg=True, blend_bg=True)
    args.update(options)
    return LayerFusionApply.execute(model, **args).result[0]


@pytest.fixture(scope="module")
def conds(tiny):
    return LayerFusionConditioning.execute(tiny.clip, "a glass bottle", "a wooden table", "", "blurry").result


@pytest.fixture(scope="module")
def fg_lora_model(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm")
    from safetensors.torch import save_file

    save_file(standins.attn_lora_standin(standins.unet_shapes(tiny.model), rank=4), str(folder / standins.ATTN_FILE))
    lora = lora_files.load_lora(str(folder / standins.ATTN_FILE), tiny.model.model)
    return apply_branch_lora(tiny.model, lora, Branch.FG, 1.0)


def noise_for(rows, size=16, seed=1):
    return torch.randn(rows, 4, size, size, generator=torch.Generator().manual_seed(seed))


def sample(model, conds, rows=3, cfg=5.0, steps=STEPS, size=16, seed=1):
    import comfy.sample

    noise = noise_for(rows, size, seed)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", conds[0], conds[1], torch.zeros_like(noise),
                               seed=0, disable_pbar=True)


def stream_cond(cond, s):
    return [[cond[0][0][s:s + 1], {"pooled_output": cond[0][1]["pooled_output"][s:s + 1]}]]


def rows_of(stream, sets):
    return [3 * i + stream for i in range(sets)]


def record(model):
    """The MaskRecord the model's last finished run left."""
    return fusion_patch(model).records.record


@pytest.mark.parametrize("mode,cfg", [
    ("prior_pass", 5.0), ("in_run", 1.0),  # each mode and each cfg in the quick tier; the other pairs in the slow one
    pytest.param("prior_pass", 1.0, marks=pytest.mark.slow), pytest.param("in_run", 5.0, marks=pytest.mark.slow),
])
def test_blending_off_equals_independent_runs(tiny, fg_lora_model, conds, cfg, mode):
    import comfy.sample

    sets = 2
    fused = sample(apply(fg_lora_model, prior_mode=mode, **ALL_OFF), conds, rows=3 * sets, cfg=cfg)
    same_batch = sample(enable_layered_batch(fg_lora_model), conds, rows=3 * sets, cfg=cfg)
    assert torch.equal(fused, same_batch)  # the patch itself changes nothing, bit for bit
    noise = noise_for(3 * sets)
    for row in range(3 * sets):
        stream = row % 3
        own_model = apply_branch_lora(tiny.model, *_fg_lora(fg_lora_model), Branch.FG, 1.0) if stream == FG else tiny.model
        alone = comfy.sample.sample(own_model, noise[row:row + 1], STEPS, cfg, "euler", "normal", stream_cond(conds[0], stream),
                                    stream_cond(conds[1], stream), torch.zeros_like(noise[row:row + 1]), seed=0, disable_pbar=True)
        scale = alone.abs().max().item()
        assert torch.allclose(fused[row], alone[0], rtol=0, atol=1e-5 * scale), (row, (fused[row] - alone[0]).abs().max())


def _fg_lora(model):
    """The LoadedLoRA behind a model patched by apply_branch_lora (rebuilt from its factors)."""
    (branch_lora,) = branch_loras(model)
    low_rank = {k: lora_files.LowRank(f.up, f.down, f.scale) for k, f in branch_lora.layers.items()}
    return (lora_files.LoadedLoRA("fg", low_rank, {}),)


def test_blend_changes_the_streams_it_should_and_never_the_others(fg_lora_model, conds):
    off = sample(apply(fg_lora_model, **ALL_OFF), conds)
    changed = lambda out: [r for r in range(3) if (out[r] - off[r]).abs().max() > 1e-3]  # noqa: E731
    same = lambda out: [r for r in range(3) if torch.equal(out[r], off[r])]  # noqa: E731
    assert changed(sample(apply(fg_lora_model), conds)) == [FG, BG, BL]
    out = sample(apply(fg_lora_model, bg_mode="bl_from_bg"), conds)
    assert changed(out) == [FG, BL] and same(out) == [BG]  # the background stays pure SDXL
    out = sample(apply(fg_lora_model, blend_fg=False, blend_bg=False), conds)
    assert changed(out) == [BL] and same(out) == [FG, BG]  # object into the composite only
    out = sample(apply(fg_lora_model, blend_blend=False, blend_bg=False), conds)
    assert changed(out) == [FG] and same(out) == [BG, BL]


def expected_extraction_step(model, prior_at, steps=STEPS):
    import comfy.samplers

    sampling = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "normal", steps)
    threshold = sampling.percent_to_sigma(1.0 - prior_at)
    return next(i for i, s in enumerate(sigmas[:-1].tolist()) if s <= threshold)


@pytest.mark.parametrize("prior_at", [0.8, 0.4])
def test_prior_pass_runs_the_fg_rows_alone_and_stops_at_the_extraction_step(fg_lora_model, conds, prior_at):
    model = apply(fg_lora_model, prior_at=prior_at)
    batch_sizes = []
    first_layer = model.model.diffusion_model.input_blocks[0][0]  # the first conv: inside the UNet call, after our wrapper
    hook = first_layer.register_forward_pre_hook(lambda mod, args: batch_sizes.append(args[0].shape[0]))
    try:
        sample(model, conds, rows=6, cfg=5.0)
    finally:
        hook.remove()
    k = expected_extraction_step(model, prior_at)
    rec = record(model)
    assert rec.extractions == 1 and rec.extraction_step == k and rec.extraction_phase is Phase.PRIOR_PASS
    assert rec.prior_pass_calls == k + 1 and rec.joint_calls == STEPS
    assert batch_sizes == [2 * 2] * (k + 1) + [6 * 2] * STEPS  # FG rows of cond + uncond, then the whole batch
    assert min(step for _, step in rec.soft) == 0  # the joint run blends from blend_start = 0


def test_in_run_extracts_once_and_blends_only_after(fg_lora_model, conds):
    model = apply(fg_lora_model, prior_mode="in_run")
    batch_sizes = []
    first_layer = model.model.diffusion_model.input_blocks[0][0]
    hook = first_layer.register_forward_pre_hook(lambda mod, args: batch_sizes.append(args[0].shape[0]))
    try:
        sample(model, conds)
    finally:
        hook.remove()
    assert batch_sizes == [3 * 2] * STEPS  # one UNet call per step: three streams, cond and uncond together
    k = expected_extraction_step(model, 0.8)
    rec = record(model)
    assert rec.extractions == 1 and rec.extraction_step == k and rec.extraction_phase is Phase.JOINT
    assert rec.prior_pass_calls == 0 and min(step for _, step in rec.soft) == k + 1


def test_masks_are_in_unit_range_with_each_blocks_token_count(fg_lora_model, conds):
    model = apply(fg_lora_model)
    sample(model, conds, rows=6, size=16)
    rec = record(model)
    grids = {("input", 4): 8, ("input", 5): 8, ("input", 7): 4, ("input", 8): 4, ("middle", 0): 4,
             ("output", 0): 4, ("output", 1): 4, ("output", 2): 4, ("output", 3): 8, ("output", 4): 8, ("output", 5): 8}
    assert rec.structure.shape == (2, 8, 8) and rec.structure.min() >= 0 and rec.structure.max() <= 1
    assert {key for key, _ in rec.soft} == {(*block, 0) for block in grids}
    for (key, _), soft in rec.soft.items():
        side = grids[key[:2]]
        assert soft.shape == (2, side, side) and soft.min() >= 0 and soft.max() <= 1


def test_norm_quantile_reaches_every_blend(fg_lora_model, conds):
    """norm_quantile 0.75: each recorded soft mask has at least a quarter of its tokens at 1 (min-max: only its peak),
    and the run differs from the default one; 1.0 is the default run bit for bit."""
    default = sample(apply(fg_lora_model), conds, rows=3, size=16)
    assert torch.equal(sample(apply(fg_lora_model, norm_quantile=1.0), conds, rows=3, size=16), default)
    model = apply(fg_lora_model, norm_quantile=0.75)
    assert not torch.equal(sample(model, conds, rows=3, size=16), default)
    for soft in record(model).soft.values():
        top_share = (soft.flatten(1) >= 1.0 - 1e-6).float().mean(dim=1)
        assert bool((top_share >= 0.25 - 1.0 / soft[0].numel()).all()), top_share


def test_every_sdxl_block_blends_on_the_full_depth_model(tiny_full_unet, tiny, conds):
    model = apply(tiny_full_unet, prior_at=1.0)
    sample(model, conds, rows=3, cfg=1.0, steps=1, size=8)
    assert record(model).blended == {(kind, key) for kind in ("attn1", "attn2") for key in SDXL_KEYS}


@pytest.mark.slow  # run state between runs: test_run_state in the quick tier
def test_two_runs_in_a_row_equal_each_run_alone(tiny, conds):
    first = apply(tiny.model, d=4.0, prior_mode="in_run")
    second = apply(tiny.model, d=20.0, bg_mode="bl_from_bg", prior_at=0.5)
    a, b = sample(first, conds), sample(second, conds)
    assert torch.equal(sample(apply(tiny.model, d=20.0, bg_mode="bl_from_bg", prior_at=0.5), conds), b)
    assert torch.equal(sample(apply(tiny.model, d=4.0, prior_mode="in_run"), conds), a)
    assert not torch.equal(a, b)


def test_another_packs_replace_patches_keep_working(tiny, conds):
    from comfy.ldm.modules.attention import optimized_attention

    calls = {"attn1": 0, "attn2": 0}

    def counting(kind):
        def replace(q, k, v, extra_options):
            calls[kind] += 1
            return optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"))
        return replace

    other = tiny.model.clone()
    other.set_model_attn2_replace(counting("attn2"), "middle", 0)  # a block-wide key, as some packs use
    other.set_model_attn1_replace(counting("attn1"), "output", 5, 0)  # the structure block of the tiny model
    with_other = sample(apply(other, **ALL_OFF), conds)
    assert calls["attn1"] > 0 and calls["attn2"] > 0
    assert torch.equal(with_other, sample(apply(tiny.model, **ALL_OFF), conds))


def test_clear_errors(tiny, conds):
    model = apply(tiny.model, prior_mode="in_run")
    calls = []
    hook = model.model.diffusion_model.input_blocks[0][0].register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(BatchLayoutError, match="the sampler's latent has 4 rows, expected a multiple of 3"):
            sample(model, conds, rows=4)
    finally:
        hook.remove()
    assert calls == [] and record(model) is None  # refused before any UNet call: no run, no record
    plain = tiny.clip.encode_from_tokens(tiny.clip.tokenize("a bottle"), return_pooled=True)
    stock = [[plain[0], {"pooled_output": plain[1]}]]
    with pytest.raises(ValueError, match="does not come from LayerFusion Conditioning"):
        sample(apply(tiny.model), (stock, stock))
    with pytest.raises(ValueError, match="LayerFusion Apply: input 'model': is a BaseModel model, expected SDXL"):
        apply(tiny_sdxl.build_sd15_unet())
    with pytest.raises(ValueError, match=r"input 'model': already went through LayerFusion Apply\. Use one LayerFusion Apply "
                                         r"per model: connect the model from before the first one\.$"):
        apply(apply(tiny.model))


def test_conditioning_layout_eos_and_long_prompts(tiny):
    long_fg = ", ".join(["a tall clear glass bottle"] * 20)  # about 120 tokens: two 77-token chunks
    pos, neg = LayerFusionConditioning.execute(tiny.clip, long_fg, "a table", "", "blurry", bg_negative="people").result
    assert pos[0][0].shape == (3, 154, tiny_sdxl.CLIP_L_WIDTH + tiny_sdxl.CLIP_G_WIDTH)
    assert pos[0][1]["pooled_output"].shape == (3, tiny_sdxl.CLIP_G_WIDTH)
    assert pos[0][1][EOS_KEY] == (76,)  # the first chunk's end token
    explicit = LayerFusionConditioning.execute(tiny.clip, long_fg, "a table", f"{long_fg}, a table", "blurry").result[0]
    assert torch.equal(explicit[0][0], pos[0][0])
    short = LayerFusionConditioning.execute(tiny.clip, "a glass bottle", "", "", "").result[0]
    assert short[0][1][EOS_KEY] == (4,)  # 1 + the three tokens of "a glass bottle"
    assert neg[0][0].shape[0] == 3 and not torch.equal(neg[0][0][1], neg[0][0][0])  # bg has its own negative


def test_masks_node_shows_what_the_run_used(tiny, conds):
    from layerfusion.nodes.fusion import LayerFusionMasks

    model = apply(tiny.model, d=6.0)
    out = sample(model, conds, rows=6, size=16)
    rec = record(model)
    structure, soft, hard, preview = LayerFusionMasks.execute(model, {"samples": out}, "structure", -1).result
    assert structure.shape == soft.shape == hard.shape == (2, 128, 128) and preview.shape == (2, 128, 384, 3)
    for maps in (structure, soft, hard):
        assert maps.min() >= 0 and maps.max() <= 1
    step = rec.extraction_step
    recorded = rec.soft[(("output", 5, 0), step)].float().unsqueeze(1)
    expected = torch.nn.functional.interpolate(recorded, size=(128, 128), mode="bilinear", align_corners=False).squeeze(1)
    assert torch.allclose(soft, expected.clamp(0, 1), atol=1e-6)
    recorded_hard = torch.sigmoid(6.0 * (recorded - 0.5))
    expected_hard = torch.nn.functional.interpolate(recorded_hard, size=(128, 128), mode="bilinear", align_corners=False)
    assert torch.allclose(hard, expected_hard.squeeze(1).clamp(0, 1), atol=1e-6)
    middle = LayerFusionMasks.execute(model, {"samples": out}, "middle 0 0", 2).result[1]
    assert not torch.equal(middle, soft)
    with pytest.raises(ValueError, match="LayerFusion Masks: input 'block'"):
        LayerFusionMasks.execute(model, {"samples": out}, "output 9 9", -1)


@pytest.mark.slow  # counting every operation's FLOPs is slow; a cost guard, like the benchmark it stands for
def test_a_layerfusion_step_costs_little_more_arithmetic_than_the_limit(fg_lora_model, conds):
    """The benchmark's step-time target, guarded without wall time: the floating-point work of a
    LayerFusion run (priors read and blended in every step) against the same three-stream batch
    with the FG LoRA and no patch (the limit). Measured 1.008 here: the priors project one FG
    cond row of the 12 in the batch once more; projecting the whole batch would be about 1.1."""
    from torch.utils.flop_counter import FlopCounterMode

    def flops(model) -> int:
        with FlopCounterMode(display=False) as counter:
            sample(model, conds, rows=6)
        return counter.get_total_flops()

    limit = flops(enable_layered_batch(fg_lora_model))
    fused_model = apply(fg_lora_model, prior_mode="in_run", prior_at=1.0)
    fused = flops(fused_model)
    assert record(fused_model).joint_calls == STEPS and len(record(fused_model).blended) > 0
    assert limit < fused <= 1.03 * limit, fused / limit
