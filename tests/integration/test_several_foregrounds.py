"""Several foregrounds per layered set (K > 1) on the real ComfyUI sampler with the tiny SDXL model:
the conditioning and latents of K foregrounds, blending off equals each stream's independent run,
the masks and blends of a K = 3 run against a naive re-implementation of the equations, the user's
own background with K = 2, and mismatched layouts refused by name."""

from __future__ import annotations

import pytest
import torch

from layerfusion.layerfusion_core.fusion.blending import BgMode, BlendSwitches
from layerfusion.layerfusion_core.layout.latents import empty_layered_latent
from layerfusion.layerfusion_core.layout.rows import BatchLayoutError, Branch
from layerfusion.layerfusion_core.layout.streams import Layout
from layerfusion.layerfusion_core.patching.branch_lora import apply_branch_lora
from layerfusion.layerfusion_core.patching.layerfusion import fusion_patch
from layerfusion.layerfusion_core.patching.model_info import attention_module
from layerfusion.layerfusion_core.patching.options import EOS_KEY
from layerfusion.layerfusion_core.weights import lora_files
from layerfusion.nodes.background import LayerFusionBackground
from layerfusion.nodes.fusion import LayerFusionApply, LayerFusionConditioning, LayerFusionMasks
from layerfusion.nodes.latent import LayerFusionEmptyLatent, LayerFusionSplit
from layerfusion.nodes.placement import LayerFusionPlacement
from layerfusion.nodes.previews import MASKS_KEY
from layerfusion_dev.testnodes import standins
from support.naive import naive_attention_probs, naive_norm, naive_stack

STEPS, SIZE = 4, 16
ALL_OFF = dict(blend_blend=False, blend_fg=False, blend_bg=False)
PROMPTS = dict(fg="a glass bottle", fg_2="a red apple", fg_3="a small brass key")


def apply(model, **options):
    args = dict(d=10.0, prior_at=0.8, prior_mode="prior_pass", blend_start=0.0, blend_end=1.0, bg_mode="bg_from_bl",
                blend_blend=True, blend_fg=True, blend_bg=True)
    return LayerFusionApply.execute(model, **{**args, **options}).result[0]


def conditioning(tiny, k, **extra):
    prompts = {name: PROMPTS[name] for name in list(PROMPTS)[:k]}
    return LayerFusionConditioning.execute(tiny.clip, prompts.pop("fg"), "a wooden table", "", "blurry", **prompts, **extra).result


@pytest.fixture(scope="module")
def fg_lora(tiny, tmp_path_factory):
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("lm") / standins.ATTN_FILE
    save_file(standins.attn_lora_standin(standins.unet_shapes(tiny.model), rank=4), str(path))
    return lora_files.load_lora(str(path), tiny.model.model)


def sample(model, conds, rows, latent=None, cfg=5.0, noise_mask=None):
    import comfy.sample

    noise = torch.randn(rows, 4, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    start = torch.zeros_like(noise) if latent is None else latent
    return comfy.sample.sample(model, noise, STEPS, cfg, "euler", "normal", conds[0], conds[1], start, noise_mask=noise_mask,
                               seed=0, disable_pbar=True)


def row_cond(cond, row):
    return [[cond[0][0][row:row + 1], {"pooled_output": cond[0][1]["pooled_output"][row:row + 1]}]]


def test_conditioning_of_k_foregrounds(tiny):
    pos, neg = conditioning(tiny, 3)
    assert pos[0][0].shape[0] == neg[0][0].shape[0] == 5  # fg, fg_2, fg_3, bg, blend
    assert pos[0][1][EOS_KEY] == (4, 4, 5)  # 1 + each prompt's token count
    one, _ = LayerFusionConditioning.execute(tiny.clip, PROMPTS["fg_2"], "a wooden table", "", "blurry").result
    assert torch.equal(pos[0][0][1:2], one[0][0][0:1])  # fg_2 is encoded as a prompt of its own
    both, _ = LayerFusionConditioning.execute(tiny.clip, "a glass bottle, a red apple, a small brass key, a wooden table",
                                              "a wooden table", "", "blurry").result
    assert torch.equal(pos[0][0][4:5], both[0][0][0:1])  # the blend prompt names every object, bottom first
    skipped, _ = conditioning(tiny, 1, fg_3=PROMPTS["fg_3"])  # an empty fg_2 is skipped
    assert skipped[0][1][EOS_KEY] == (4, 5)
    with pytest.raises(ValueError, match="input 'fg_2_negative': is set but fg_2 is empty"):
        conditioning(tiny, 1, fg_2_negative="green")


def test_conditioning_negatives_fall_back_from_own_to_fg_negative_to_shared(tiny):
    _, neg = LayerFusionConditioning.execute(tiny.clip, "a", "b", "", "blurry", fg_negative="dark", fg_2="c",
                                             fg_3="d", fg_3_negative="green").result
    encoded = {text: LayerFusionConditioning.execute(tiny.clip, text, "b", "", text).result[1][0][0][0:1]
               for text in ("dark", "green", "blurry")}
    for row, text in enumerate(["dark", "dark", "green", "blurry", "blurry"]):
        assert torch.equal(neg[0][0][row:row + 1], encoded[text]), row


def test_empty_latent_and_split_with_two_foregrounds():
    (latent,) = LayerFusionEmptyLatent.execute(64, 48, 2, foregrounds=2).result
    assert latent["samples"].shape == (8, 4, 6, 8)
    latent = {**latent, "samples": torch.arange(8.0).view(8, 1, 1, 1).expand(8, 4, 6, 8).contiguous()}
    fg, bg, blend = LayerFusionSplit.execute(latent).result
    assert fg["samples"][:, 0, 0, 0].tolist() == [0, 1, 4, 5] and bg["samples"][:, 0, 0, 0].tolist() == [2, 6]
    assert blend["samples"][:, 0, 0, 0].tolist() == [3, 7]
    with pytest.raises(ValueError, match="expected a multiple of 4"):
        LayerFusionSplit.execute({**latent, "samples": torch.zeros(6, 4, 6, 8)})


@pytest.mark.parametrize("mode", ["prior_pass", pytest.param("in_run", marks=pytest.mark.slow)])
def test_blending_off_each_of_the_k_plus_2_streams_equals_its_independent_run(tiny, fg_lora, mode):
    import comfy.sample

    conds, sets, layout = conditioning(tiny, 2), 1, Layout(2)  # one set: its four streams (two sets: the K = 1 test)
    fg_model = apply_branch_lora(tiny.model, fg_lora, Branch.FG, 1.0)
    fused = sample(apply(fg_model, prior_mode=mode, **ALL_OFF), conds, layout.per_set * sets)
    noise = torch.randn(layout.per_set * sets, 4, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    for row in range(layout.per_set * sets):
        role = row % layout.per_set
        own_model = apply_branch_lora(tiny.model, fg_lora, Branch.FG, 1.0) if role < 2 else tiny.model
        alone = comfy.sample.sample(own_model, noise[row:row + 1], STEPS, 5.0, "euler", "normal", row_cond(conds[0], role),
                                    row_cond(conds[1], role), torch.zeros_like(noise[row:row + 1]), seed=0, disable_pbar=True)
        assert torch.allclose(fused[row], alone[0], rtol=0, atol=1e-5 * alone.abs().max().item()), row


@pytest.mark.slow
def test_blending_changes_every_stream_and_the_foregrounds_differently(tiny, fg_lora):
    conds = conditioning(tiny, 2)
    fg_model = apply_branch_lora(tiny.model, fg_lora, Branch.FG, 1.0)
    off, on = (sample(apply(fg_model, **options), conds, 4) for options in (ALL_OFF, {}))
    assert all((on[r] - off[r]).abs().max() > 1e-3 for r in range(4))
    record = fusion_patch(apply(fg_model)).records.record
    assert record is None  # a fresh Apply has its own record slot
    model = apply(fg_model)
    out = sample(model, conds, 8)
    record = fusion_patch(model).records.record
    assert record.foregrounds == 2 and record.structure.shape[0] == 4  # two sets of two foregrounds
    assert not torch.equal(record.structure[0], record.structure[1])  # each foreground its own prior
    blend_image = torch.rand(2, 128, 128, 3, generator=torch.Generator().manual_seed(3))
    shown = LayerFusionMasks.execute(model, {"samples": out}, "structure", -1, blend_image=blend_image)
    structure, soft, _hard, _preview = shown.result
    assert structure.shape == soft.shape == (4, 128, 128)  # a mask per foreground of each set, set by set
    assert len(shown.ui[MASKS_KEY]) == 4 and all(pair["blend"] is not None for pair in shown.ui[MASKS_KEY])


class Capture:
    """attn2 patches around LayerFusion's in one block: the inputs (``n``, ``context``) and the
    attention output before and after the blend, at every UNet call."""

    def __init__(self, key):
        self.key, self.calls = key, []

    def __deepcopy__(self, memo):
        return self  # ComfyUI 0.3.75 deep-copies a clone's patches (their bound methods' objects too)

    def matches(self, extra_options):
        block = extra_options["block"]
        return (block[0], int(block[1]), int(extra_options.get("block_index", 0))) == self.key

    def inputs(self, n, context, value, extra_options):
        if self.matches(extra_options):
            self.calls.append({"n": n.clone(), "context": context.clone(), "heads": extra_options["n_heads"],
                               "grid": tuple(extra_options["activations_shape"][-2:]),
                               "cond_or_uncond": list(extra_options["cond_or_uncond"])})
        return n, context, value

    def before(self, n, extra_options):
        if self.matches(extra_options):
            self.calls[-1]["before"] = n.clone()
        return n

    def after(self, n, extra_options):
        if self.matches(extra_options):
            self.calls[-1]["after"] = n.clone()
        return n


@pytest.mark.parametrize("bg_mode", [BgMode.BG_FROM_BL, pytest.param(BgMode.BL_FROM_BG, marks=pytest.mark.slow)])
def test_masks_and_blends_of_three_foregrounds_equal_the_naive_equations(tiny, bg_mode):
    conds, layout = conditioning(tiny, 3), Layout(3)
    key = ("output", 5, 0)  # the tiny model's last block: the structure block, so the prior's grid is this block's
    capture = Capture(key)
    model = tiny.model.clone()
    model.set_model_attn2_patch(capture.inputs)
    model.set_model_attn2_output_patch(capture.before)
    fused = apply(model, prior_mode="in_run", prior_at=1.0, bg_mode=bg_mode.value)  # the prior at the first step
    fused.set_model_attn2_output_patch(capture.after)
    assert fusion_patch(fused).settings.structure_block == key
    sample(fused, conds, layout.per_set)
    record = fusion_patch(fused).records.record
    assert record.structure.shape[0] == 3 and record.blend_calls == STEPS - 1  # every call after the first
    call = capture.calls[-1]
    chunks, cond = len(call["cond_or_uncond"]), call["cond_or_uncond"].index(0)
    n, ctx = (t.view(chunks, layout.per_set, *t.shape[1:]) for t in (call["n"], call["context"]))
    attention = attention_module(fused.model.diffusion_model, key, "attn2")
    eos = conds[0][0][1][EOS_KEY]
    softs, hards = [], []
    for k in range(3):
        q, kk = attention.to_q(n[cond, k]).detach(), attention.to_k(ctx[cond, k]).detach()
        content = naive_attention_probs(q, kk, call["heads"])[:, :, eos[k]].mean(dim=0)  # its own prompt's EOS
        structure = record.structure[k].flatten().double()
        soft = torch.tensor(naive_norm([float(s * c) for s, c in zip(structure, content)]), dtype=torch.float64)
        softs.append(soft[None])
        hards.append(1.0 / (1.0 + torch.exp(-10.0 * (soft[None] - 0.5))))
    before, after = (call[name].view(chunks, layout.per_set, *call[name].shape[1:]).double() for name in ("before", "after"))
    for chunk in range(chunks):  # the cond chunk's masks for both chunks
        fgs, bg, bl = naive_stack([before[chunk, k][None] for k in range(3)], before[chunk, 3][None], before[chunk, 4][None],
                                  softs, hards, bg_mode, BlendSwitches())
        want = torch.cat([*fgs, bg, bl])
        scale = float(before.abs().max())
        assert torch.allclose(after[chunk], want, rtol=0, atol=1e-4 * scale), (chunk, float((after[chunk] - want).abs().max()))
    assert not torch.allclose(softs[0], softs[1])  # the test sees foregrounds with masks of their own


@pytest.mark.slow
def test_own_background_with_two_foregrounds(tiny):
    conds, sets, layout = conditioning(tiny, 2), 2, Layout(2)
    latent = empty_layered_latent(sets, SIZE * 8, SIZE * 8, layout=layout)
    photo = torch.randn(1, 4, SIZE, SIZE, generator=torch.Generator().manual_seed(5)) * 4
    model, held = LayerFusionBackground.execute(apply(tiny.model), latent, {"samples": photo}, True, 0.0, 8, 8).result
    out = sample(model, conds, layout.per_set * sets, latent=held["samples"], noise_mask=held["noise_mask"])
    bg, blend = layout.rows(8, layout.roles[2]), layout.rows(8, layout.roles[3])
    assert torch.equal(out[bg], photo.expand(sets, -1, -1, -1))
    band = fusion_patch(model).records.record.band
    assert band.shape == (sets, SIZE, SIZE)
    outside = (band == 0)[:, None].expand(sets, 4, SIZE, SIZE)
    assert 0 < int(outside[:, 0].sum()) < band.numel(), "the test needs a band that covers part of the picture"
    assert torch.equal(out[blend][outside], photo.expand(sets, -1, -1, -1)[outside])


def test_a_latent_of_another_layout_than_the_conditioning_is_refused(tiny):
    with pytest.raises(BatchLayoutError, match="expected a multiple of 4 .*2 foreground prompt"):
        sample(apply(tiny.model), conditioning(tiny, 2), 6)
    with pytest.raises(BatchLayoutError, match="expected a multiple of 3"):
        sample(apply(tiny.model), conditioning(tiny, 1), 8)


def test_placement_hints_keep_each_foregrounds_prior_and_masks_in_its_place(tiny):
    conds = conditioning(tiny, 2)
    model = apply(tiny.model)
    plain = sample(model, conds, 4)
    (unhinted,) = LayerFusionPlacement.execute(conds[0], 1.0, "").result
    assert torch.equal(sample(model, (unhinted, conds[1]), 4), plain)  # no hint: the run as without the node
    right_half = torch.zeros(1, 128, 128)
    right_half[..., 64:] = 1.0
    (hinted,) = LayerFusionPlacement.execute(conds[0], 1.0, "0 0 0.5 1", fg_2_mask=right_half).result
    hinted_out = sample(model, (hinted, conds[1]), 4)
    assert not torch.equal(hinted_out, plain)
    record = fusion_patch(model).records.record
    left = torch.zeros(record.structure.shape[-2:], dtype=torch.bool)
    left[:, : left.shape[1] // 2] = True
    for row in range(2):  # fg in the left half, fg_2 in the right half
        outside = ~left if row % 2 == 0 else left
        assert (record.structure[row][outside] == 0).all() and (record.structure[row][~outside] > 0).any()
        for (_key, _step), soft in record.soft.items():
            grid = soft.shape[-2:]
            cells = torch.nn.functional.interpolate(outside[None, None].float(), size=tuple(grid), mode="area")[0, 0] == 1
            assert (soft[row][cells] == 0).all()


@pytest.mark.parametrize("options, match", [
    (dict(fg_3_mask=torch.ones(1, 64, 64)), "input 'fg_3_mask': is connected, but the conditioning has 2 foreground"),
    (dict(boxes="0 0 1 1", fg_mask=torch.ones(1, 64, 64)), "input 'fg_mask': and line 1 of boxes both place fg"),
    (dict(boxes="0 0 1 1\n-\n0 0 1 1"), "input 'boxes': has 3 lines, the conditioning 2 foreground"),
    (dict(boxes="-\n0 0 1"), "input 'boxes': line 2: '0 0 1' is not a box"),
])
def test_placement_refuses_hints_that_do_not_fit_by_name(tiny, options, match):
    with pytest.raises(ValueError, match=match):
        LayerFusionPlacement.execute(conditioning(tiny, 2)[0], 1.0, **options)


def test_placement_needs_layerfusion_conditioning(tiny):
    from nodes import CLIPTextEncode

    (plain,) = CLIPTextEncode().encode(tiny.clip, "a cat")
    with pytest.raises(ValueError, match="LayerFusion Placement: input 'positive': does not come from LayerFusion Conditioning"):
        LayerFusionPlacement.execute(plain, 1.0)


def watched_steering(tiny):
    """The tiny model under LayerFusion Apply (blend_fg off: the foreground rows' outputs as steered), with
    the structure block's attn2 output captured before and after the pack's patch."""
    capture = Capture(("output", 5, 0))
    base = tiny.model.clone()
    base.set_model_attn2_patch(capture.inputs)
    base.set_model_attn2_output_patch(capture.before)
    model = apply(base, blend_fg=False)
    model.set_model_attn2_output_patch(capture.after)
    assert fusion_patch(model).settings.structure_block == capture.key
    return model, capture


def halves(grid):
    """Placement's weights for the boxes '0 0 0.5 1' (fg) and '0.5 0 1 1' (fg_2) at strength 1, per token."""
    weights = torch.zeros(2, *grid)
    weights[0, :, : grid[1] // 2], weights[1, :, grid[1] // 2:] = 1.0, 1.0
    return weights


def test_steering_weights_each_foregrounds_prompt_by_its_hint_unless_switched_off(tiny):
    conds = conditioning(tiny, 2)
    model, capture = watched_steering(tiny)
    (hinted,) = LayerFusionPlacement.execute(conds[0], 1.0, "0 0 0.5 1\n0.5 0 1 1", steer=False).result
    (steered,) = LayerFusionPlacement.execute(conds[0], 1.0, "0 0 0.5 1\n0.5 0 1 1").result  # steer: the default
    out_hinted = sample(model, (hinted, conds[1]), 4)
    assert torch.equal(out_hinted[:2], sample(model, conds, 4)[:2])  # steer off: the foregrounds as without hints
    out_steered = sample(model, (steered, conds[1]), 4)
    assert not torch.equal(out_steered[:2], out_hinted[:2])  # the foregrounds change
    call = capture.calls[-1]  # the last call of the steered run, both chunks in it
    chunks, (h, w) = call["cond_or_uncond"], call["grid"]
    assert sorted(chunks) == [0, 1]
    before, after = (call[k].view(len(chunks), 4, h, w, -1) for k in ("before", "after"))
    cond, uncond = chunks.index(0), chunks.index(1)
    weights = halves((h, w))[..., None]
    expected = before[uncond, :2] + weights * (before[cond, :2] - before[uncond, :2])  # naive: uncond + w (cond - uncond)
    torch.testing.assert_close(after[cond, :2], expected)
    assert torch.equal(after[cond, 0, :, w // 2:], before[uncond, 0, :, w // 2:])  # outside its hint: the prompt has no effect
    assert torch.equal(after[uncond, :2], before[uncond, :2])  # the uncond chunk untouched
    assert not torch.equal(after[cond, :2], before[uncond, :2])


@pytest.mark.parametrize("apart", [False, True], ids=["cfg 1", "cond and uncond apart"])
def test_steering_without_both_chunks_weights_the_output_itself_and_says_so_once(tiny, caplog, monkeypatch, apart):
    conds = conditioning(tiny, 2)
    model, capture = watched_steering(tiny)
    (steered,) = LayerFusionPlacement.execute(conds[0], 1.0, "0 0 0.5 1\n0.5 0 1 1").result
    if apart:  # cond and uncond together would not fit: ComfyUI runs them in separate UNet calls
        base = model.model
        required = base.memory_required
        monkeypatch.setattr(base, "memory_required", lambda shape, **kw: float("inf") if shape[0] > 4 else required(shape, **kw))
    with caplog.at_level("WARNING"):
        sample(model, (steered, conds[1]), 4, cfg=5.0 if apart else 1.0)  # cfg 1: ComfyUI runs no uncond
    assert sum("steer: a UNet call had cond or uncond rows alone" in r.getMessage() for r in caplog.records) == 1
    seen = {tuple(call["cond_or_uncond"]) for call in capture.calls}
    assert seen == ({(0,), (1,)} if apart else {(0,)})
    for call in capture.calls[-2:]:  # cond and uncond alike (their difference stays the prompt's)
        (h, w) = call["grid"]
        before, after = (call[k].view(4, h, w, -1) for k in ("before", "after"))
        torch.testing.assert_close(after[:2], before[:2] * halves((h, w))[..., None])
