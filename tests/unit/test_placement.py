"""Placement hints on plain tensors: a box by token centres, a mask by area, the prior weighted as
documented, strength 0 changing nothing."""

from __future__ import annotations

import pytest
import torch

from layerfusion.layerfusion_core.fusion.placement import Hint, Placement, parse_box


def test_a_box_covers_the_tokens_whose_centres_are_inside_it():
    got = Hint(box=(0.0, 0.5, 0.5, 1.0)).on_grid((4, 4)).view(4, 4)
    expected = torch.zeros(4, 4)
    expected[2:, :2] = 1.0  # the lower left quarter
    assert torch.equal(got, expected)


def test_a_mask_is_averaged_over_each_token():
    mask = torch.zeros(1, 8, 8)
    mask[:, :4, :2] = 1.0
    got = Hint(mask=mask).on_grid((2, 2)).view(2, 2)
    assert torch.equal(got, torch.tensor([[0.5, 0.0], [0.0, 0.0]]))


@pytest.mark.parametrize("strength", [1.0, 0.25])
def test_the_prior_of_each_hinted_foreground_is_weighted_and_the_others_kept(strength):
    prior = torch.rand(4, 16, generator=torch.Generator().manual_seed(0))  # two sets of two foregrounds
    box = Hint(box=(0.0, 0.0, 0.5, 0.5))
    got = Placement((None, box), strength).weigh(prior, (4, 4), 2)
    inside = box.on_grid((4, 4))[0].bool()
    for row in range(4):
        if row % 2 == 0:
            assert torch.equal(got[row], prior[row])
        else:
            assert torch.equal(got[row][inside], prior[row][inside])
            assert torch.allclose(got[row][~inside], prior[row][~inside] * (1 - strength))


def test_strength_zero_changes_nothing_and_too_many_hints_are_refused():
    prior = torch.rand(2, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(Placement((Hint(box=(0, 0, 0.5, 0.5)),), 0.0).weigh(prior, (4, 4), 1), prior)
    with pytest.raises(ValueError, match="hints for 2 foregrounds, but the run has 1"):
        Placement((None, Hint(box=(0, 0, 1, 1))), 1.0).weigh(prior, (4, 4), 1)
    with pytest.raises(ValueError, match="3 images for 2 layered sets"):
        Placement((Hint(mask=torch.ones(3, 8, 8)),), 1.0).weigh(prior, (4, 4), 1)


@pytest.mark.parametrize("text, box", [("0 0.2 0.5 1", (0.0, 0.2, 0.5, 1.0)), ("0.1, 0.1, 0.9, 0.9", (0.1, 0.1, 0.9, 0.9))])
def test_parse_box(text, box):
    assert parse_box(text) == box


@pytest.mark.parametrize("text", ["0 0 1", "a b c d", "0.5 0 0.4 1", "0 0 1.5 1"])
def test_parse_box_refuses_what_is_not_a_box(text):
    with pytest.raises(ValueError, match="box"):
        parse_box(text)


def test_the_weights_are_per_set_and_foreground_and_weigh_uses_them():
    placement = Placement((Hint(box=(0.0, 0.0, 0.5, 1.0)), None), 0.5)
    weights = placement.weights((2, 2), 2, 3)
    assert weights.shape == (3, 2, 4)
    assert torch.equal(weights[:, 0], torch.tensor([[1.0, 0.5, 1.0, 0.5]] * 3)) and (weights[:, 1] == 1).all()
    prior = torch.rand(6, 4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(placement.weigh(prior, (2, 2), 2), prior * weights.flatten(0, 1))
