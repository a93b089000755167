"""The light-and-shadow layers (layerfusion_core.light_shadow) on tiny tensors: the target and the two
layers against a naive per-pixel implementation, and the stack, flattened independently, giving the
composite back within 1/255 where the foreground is not opaque, in sRGB and in linear light."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from layerfusion.layerfusion_core import light_shadow
from support.flattening import lit_objects, lit_scene, to_linear, to_srgb

ALPHAS = [0.0, 1.0, 0.5, 254 / 255, 1 / 255, 0.2, 0.8, 0.0, 1.0, 0.35, 0.65, 0.1]  # 3x4 pixels: clear, opaque, soft


def tiny(seed: int = 0, height: int = 3, width: int = 4):
    """(foreground [H, W, 4] with ALPHAS, background, composite [H, W, 3]), all random but the alpha."""
    gen = torch.Generator().manual_seed(seed)
    fg = torch.rand(height, width, 4, generator=gen)
    fg[..., 3] = torch.tensor(ALPHAS[:height * width]).reshape(height, width)
    return fg, torch.rand(height, width, 3, generator=gen), torch.rand(height, width, 3, generator=gen)


def naive_target(fg, bg, comp):
    out = np.zeros(bg.shape)
    for y in range(bg.shape[0]):
        for x in range(bg.shape[1]):
            a = float(fg[y, x, 3])
            for c in range(3):
                if a == 1:
                    out[y, x, c] = bg[y, x, c]
                else:
                    out[y, x, c] = min(1.0, max(0.0, (float(comp[y, x, c]) - a * float(fg[y, x, c])) / (1 - a)))
    return out


def naive_layers(bg, wanted):
    """(shadow, light) per pixel: Multiply by T/B where darker, add T-B where lighter; alpha where either acts."""
    shadow, light = np.ones(bg.shape[:2] + (4,)), np.zeros(bg.shape[:2] + (4,))
    for y in range(bg.shape[0]):
        for x in range(bg.shape[1]):
            for c in range(3):
                b, t = float(bg[y, x, c]), float(wanted[y, x, c])
                if t < b:
                    shadow[y, x, c] = t / b
                if t > b:
                    light[y, x, c] = t - b
            shadow[y, x, 3] = 1.0 if any(shadow[y, x, c] != 1 for c in range(3)) else 0.0
            light[y, x, 3] = 1.0 if any(light[y, x, c] != 0 for c in range(3)) else 0.0
    return shadow, light


def test_the_target_is_the_naive_one():
    fg, bg, comp = tiny()
    got = light_shadow.target(fg, bg, comp)
    assert np.abs(got.double().numpy() - naive_target(fg, bg, comp)).max() < 1e-6


def test_the_target_is_the_composite_where_clear_and_the_background_where_opaque():
    fg, bg, comp = tiny(1)
    got = light_shadow.target(fg, bg, comp)
    clear, opaque = fg[..., 3] == 0, fg[..., 3] == 1
    assert torch.equal(got[clear], comp[clear]) and torch.equal(got[opaque], bg[opaque])


def test_shadow_and_light_are_the_naive_layers_and_take_the_background_to_the_target():
    fg, bg, comp = tiny(2)
    wanted = light_shadow.target(fg, bg, comp)
    shadow, light = light_shadow.shadow_and_light(bg, wanted)
    naive_shadow, naive_light = naive_layers(bg, wanted)
    assert np.abs(shadow.double().numpy() - naive_shadow).max() < 1e-6
    assert np.abs(light.double().numpy() - naive_light).max() < 1e-6
    assert torch.allclose(bg * shadow[..., :3] + light[..., :3], wanted, atol=1e-6)


def stored_stack(fg, bg, shadow, light, space):
    """Our layers as an editor (space "srgb") or Create Layered Image ("linear") sees them, naively per pixel."""
    out = np.zeros(bg.shape)
    decode, encode = (to_linear, to_srgb) if space == "linear" else (float, float)
    q = light_shadow.eight_bit
    fg, bg = q(fg), q(bg)
    for y in range(bg.shape[0]):
        for x in range(bg.shape[1]):
            a = float(fg[y, x, 3])
            for c in range(3):
                under = decode(float(bg[y, x, c]))
                if shadow[y, x, 3] > 0:
                    under *= decode(float(shadow[y, x, c]))
                if light[y, x, 3] > 0:
                    under = min(1.0, under + decode(float(light[y, x, c])))
                out[y, x, c] = encode(a * decode(float(fg[y, x, c])) + (1 - a) * under)
    return out


@pytest.mark.parametrize("space", light_shadow.SPACES)
def test_the_stored_layers_flatten_back_to_the_composite_where_the_foreground_is_not_opaque(space):
    gen = torch.Generator().manual_seed(5)
    fg = torch.rand(6, 8, 4, generator=gen)
    fg[..., 3] = torch.tensor(ALPHAS * 4).reshape(6, 8)
    bg, comp = lit_scene(fg, seed=5, space=space)
    bg, comp = bg[0], comp[0]
    shadow, light, reachable = light_shadow.light_and_shadow(fg, bg, comp, space)
    assert reachable.all()  # the composite was made by an over in this space
    got = stored_stack(fg, bg, shadow, light, space)
    error = np.abs(got - light_shadow.eight_bit(comp).double().numpy()).max(axis=-1) * 255
    shows = fg[..., 3].numpy() < 1
    assert error[shows].max() <= 1.0
    assert error[fg[..., 3].numpy() == 0].max() <= 0.5  # away from the object: the composite, to the rounding
    # the neutral layers would have left the plain over: the test can tell
    plain = stored_stack(fg, bg, torch.ones_like(shadow) * torch.tensor([1, 1, 1, 0.0]), torch.zeros_like(light), space)
    assert np.abs(plain - light_shadow.eight_bit(comp).double().numpy()).max() * 255 > 5


@pytest.mark.parametrize("space", light_shadow.SPACES)
def test_the_stored_layers_are_8_bit_marked_where_they_act_and_neutral_elsewhere(space):
    fg, bg, comp = tiny(3)
    shadow, light, _reachable = light_shadow.light_and_shadow(fg, bg, comp, space)
    for layer, neutral in ((shadow, 1.0), (light, 0.0)):
        assert torch.equal(layer, light_shadow.eight_bit(layer)) and set(layer[..., 3].unique().tolist()) <= {0.0, 1.0}
        idle = layer[..., 3] == 0
        assert (layer[idle][:, :3] == neutral).all() and ((layer[~idle][:, :3] != neutral).any(dim=-1)).all()
    opaque = fg[..., 3] == 1
    assert opaque.any() and not shadow[opaque][:, 3].any() and not light[opaque][:, 3].any()


def test_where_the_composite_differs_from_a_nearly_opaque_foreground_it_is_unreachable():
    fg, bg, comp = tiny(4)
    fg[..., 3] = 0.5
    fg[0, 0, 3] = 250 / 255
    comp = light_shadow.over(light_shadow.eight_bit(fg), light_shadow.eight_bit(bg))
    comp[0, 0] = (fg[0, 0, :3] + 0.5).clamp(0, 1)  # the object recoloured where it is nearly opaque
    comp[0, 0, 0] = 1.0 if fg[0, 0, 0] < 0.5 else 0.0
    _shadow, _light, reachable = light_shadow.light_and_shadow(fg, bg, comp)
    assert not reachable[0, 0] and reachable.flatten()[1:].all()


def test_a_space_that_is_not_one_is_refused():
    fg, bg, comp = tiny()
    with pytest.raises(ValueError, match="space 'lab': expected one of srgb, linear"):
        light_shadow.light_and_shadow(fg, bg, comp, "lab")


def test_the_blend_table_names_each_mode_once_per_flattener():
    for field in ("name", "psd_key", "ora_op", "comfy"):
        assert len({getattr(blend, field) for blend in light_shadow.BLENDS}) == len(light_shadow.BLENDS)
    assert light_shadow.LAYER_BLENDS == {"shadow": light_shadow.MULTIPLY, "light": light_shadow.ADD}


# ---- several objects (K foregrounds of one set, bottom first) --------------------------------------
def objects(seed: int = 0, count: int = 3, height: int = 3, width: int = 4) -> torch.Tensor:
    """``[count, H, W, 4]`` random objects whose alphas mix clear, opaque and soft pixels (ALPHAS, rolled)."""
    gen = torch.Generator().manual_seed(seed)
    layers = torch.rand(count, height, width, 4, generator=gen)
    for k in range(count):
        layers[k, ..., 3] = torch.tensor(np.roll(ALPHAS * 4, 3 * k)[:height * width]).reshape(height, width)
    return layers


def naive_stack_target(layers, bg, comp):
    """T per pixel for objects bottom first: what shows through ``c`` and the objects' own colour ``P``
    from over() one object at a time; the background where some object is opaque."""
    out = np.zeros(bg.shape)
    for y in range(bg.shape[0]):
        for x in range(bg.shape[1]):
            clear, colour = 1.0, [0.0, 0.0, 0.0]
            for layer in layers:
                a = float(layer[y, x, 3])
                colour = [a * float(layer[y, x, c]) + (1 - a) * colour[c] for c in range(3)]
                clear *= 1 - a
            for c in range(3):
                out[y, x, c] = float(bg[y, x, c]) if clear == 0 else min(1.0, max(0.0, (float(comp[y, x, c]) - colour[c]) / clear))
    return out


def test_with_several_objects_the_target_is_the_naive_one_and_over_is_one_object_after_the_other():
    layers, (_fg, bg, comp) = objects(), tiny(6)
    got = light_shadow.target(list(layers), bg, comp)
    assert np.abs(got.double().numpy() - naive_stack_target(layers, bg, comp)).max() < 1e-5
    stepwise = bg
    for layer in layers:
        stepwise = light_shadow.over(layer, stepwise)
    assert torch.allclose(light_shadow.over(list(layers), bg), stepwise, atol=1e-6)
    opaque = (layers[..., 3] == 1).any(dim=0)
    assert opaque.any() and torch.equal(got[opaque], bg[opaque])
    assert torch.equal(light_shadow.shows_through(list(layers)), ~opaque)


def test_one_object_in_a_list_is_the_object_itself_to_the_bit():
    fg, bg, comp = tiny(7)
    assert torch.equal(light_shadow.target([fg], bg, comp), light_shadow.target(fg, bg, comp))
    assert torch.equal(light_shadow.over([fg], bg), light_shadow.over(fg, bg))
    for space in light_shadow.SPACES:
        for alone, listed in zip(light_shadow.light_and_shadow(fg, bg, comp, space), light_shadow.light_and_shadow([fg], bg, comp, space)):
            assert torch.equal(alone, listed)
    with pytest.raises(ValueError, match="no object"):
        light_shadow.target([], bg, comp)


def stored_objects_stack(layers, bg, shadow, light, space):
    """`stored_stack` with several objects: each, at 8 bits, over what is below it, bottom first."""
    out = stored_stack(torch.zeros_like(layers[0]), bg, shadow, light, space)  # the lit background alone
    decode, encode = (to_linear, to_srgb) if space == "linear" else (float, float)
    for layer in light_shadow.eight_bit(layers):
        for y in range(bg.shape[0]):
            for x in range(bg.shape[1]):
                a = float(layer[y, x, 3])
                for c in range(3):
                    out[y, x, c] = encode(a * decode(float(layer[y, x, c])) + (1 - a) * decode(out[y, x, c]))
    return out


@pytest.mark.parametrize("space", light_shadow.SPACES)
def test_with_several_objects_the_stored_layers_flatten_back_to_the_composite_where_no_object_is_opaque(space):
    layers = objects(8, count=3, height=6, width=8)
    bg, comp = lit_objects(layers, seed=8, space=space)
    bg, comp = bg[0], comp[0]
    shadow, light, reachable = light_shadow.light_and_shadow(list(layers), bg, comp, space)
    assert reachable.all()  # the composite was made by the objects over a lit background, in this space
    got = stored_objects_stack(layers, bg, shadow, light, space)
    error = np.abs(got - light_shadow.eight_bit(comp).double().numpy()).max(axis=-1) * 255
    shows = light_shadow.shows_through(list(layers)).numpy()
    assert shows.sum() > 10 and error[shows].max() <= 1.0
    # the layers made for the top object alone would miss it: the test can tell
    top_only = light_shadow.light_and_shadow(layers[-1], bg, comp, space)[:2]
    assert np.abs(stored_objects_stack(layers, bg, *top_only, space) - light_shadow.eight_bit(comp).double().numpy()).max() * 255 > 5


def test_with_several_objects_a_recoloured_nearly_opaque_upper_object_is_unreachable():
    layers, (_fg, bg, _comp) = objects(9, count=2), tiny(9)
    layers[..., 3] = 0.5
    layers[1, 0, 0, 3] = 250 / 255
    comp = light_shadow.over(list(light_shadow.eight_bit(layers)), light_shadow.eight_bit(bg))
    comp[0, 0] = 1.0 - light_shadow.eight_bit(layers[1, 0, 0, :3]).round()  # far from what the top object shows
    _shadow, _light, reachable = light_shadow.light_and_shadow(list(layers), bg, comp)
    assert not reachable[0, 0] and reachable.flatten()[1:].all()
