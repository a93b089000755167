"""`LayerFusion Placement`: where each foreground should be (a box or a MASK), so that several
objects in one run do not claim the same place."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..layerfusion_core.fusion.placement import Hint, Placement, parse_box
from ..layerfusion_core.layout.streams import MAX_FOREGROUNDS
from ..layerfusion_core.patching.options import EOS_KEY, PLACEMENT_KEY
from .common import CATEGORY, node_error, require_finite

PLACEMENT = "LayerFusion Placement"
FOREGROUND_NAMES = ("fg", *(f"fg_{k}" for k in range(2, MAX_FOREGROUNDS + 1)))
NO_BOX = "-"


def _foregrounds(positive) -> int:
    eos = positive[0][1].get(EOS_KEY) if positive and len(positive[0]) > 1 else None
    if eos is None:
        raise node_error(PLACEMENT, "positive", "does not come from LayerFusion Conditioning",
                         "Connect LayerFusion Conditioning's positive output here, and this node's output to the sampler.")
    return 1 if isinstance(eos, int) else len(eos)


def _boxes(text: str, count: int) -> list[tuple[float, float, float, float] | None]:
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) > count:
        raise node_error(PLACEMENT, "boxes", f"has {len(lines)} lines, the conditioning {count} foreground(s)",
                         "Write one line per foreground, bottom first (fg, fg_2, ..): 'x0 y0 x1 y1', or '-' for none.")
    boxes = []
    for number, line in enumerate(lines, start=1):
        try:
            boxes.append(None if line in ("", NO_BOX) else parse_box(line))
        except ValueError as err:
            raise node_error(PLACEMENT, "boxes", f"line {number}: {err}",
                             "Give x0 y0 x1 y1 as fractions of the picture (0 0 0.5 1: its left half).") from None
    return boxes + [None] * (count - len(boxes))


class LayerFusionPlacement(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        masks = [io.Mask.Input(f"{name}_mask", optional=True,
                               tooltip=f"Optional: where {name} should be (1 = here), any size (it is scaled to the picture). "
                                       "One mask for every set, or one per set.") for name in FOREGROUND_NAMES]
        return io.Schema(
            node_id="LayerFusionPlacement",
            display_name=PLACEMENT,
            category=CATEGORY,
            description="Placement hints for several foregrounds: a box or a mask per foreground weights that foreground's "
                        "structure prior, so its masks (and the object in the composite) stay in its place and two objects "
                        "do not claim the same one, and (steer) where its prompt acts, so its own layer draws the object there. Goes "
                        "between LayerFusion Conditioning's positive and the sampler.",
            inputs=[
                io.Conditioning.Input("positive", tooltip="LayerFusion Conditioning's positive."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="1: the prior is 0 outside the hint (the object's masks stay inside it) and, with steer, "
                                       "the foreground's prompt does not act there. 0: no effect. Between: outside the hint "
                                       "both are weighted by 1 - strength."),
                io.String.Input("boxes", multiline=True, default="", optional=True,
                                tooltip="One line per foreground, bottom first (fg, fg_2, ..): 'x0 y0 x1 y1' as fractions of "
                                        "the picture (e.g. '0 0.2 0.5 1': the lower left part), or '-' for no box. A "
                                        "foreground with a mask takes no box."),
                io.Boolean.Input("steer", default=True, optional=True,
                                 tooltip="On: each foreground's prompt guides it only inside its hint (in every step its "
                                         "cross-attention is taken from the uncond's outside the hint), so the foreground layer "
                                         "itself draws its object in its place (at cfg 1, with no uncond, a cruder steer). Off: only the masks (and with "
                                         "them the composite) follow the hints; a foreground that draws its object elsewhere is "
                                         "then cut at its hint's edge in the composite."),
                *masks,
            ],
            outputs=[io.Conditioning.Output("positive_out", display_name="positive",
                                            tooltip="The positive with the hints, for the sampler.")],
        )

    @classmethod
    def execute(cls, positive, strength: float, boxes: str = "", steer: bool = True,
                **masks: torch.Tensor | None) -> io.NodeOutput:
        count = _foregrounds(positive)
        hints: list[Hint | None] = [None if box is None else Hint(box=box) for box in _boxes(boxes, count)]
        for k, name in enumerate(FOREGROUND_NAMES):
            mask = masks.get(f"{name}_mask")
            if mask is None:
                continue
            if k >= count:
                raise node_error(PLACEMENT, f"{name}_mask", f"is connected, but the conditioning has {count} foreground(s)",
                                 f"Fill {name} in LayerFusion Conditioning, or disconnect this mask.")
            if hints[k] is not None:
                raise node_error(PLACEMENT, f"{name}_mask", f"and line {k + 1} of boxes both place {name}",
                                 f"Keep one: write '-' on line {k + 1} of boxes, or disconnect the mask.")
            require_finite(PLACEMENT, f"{name}_mask", mask)
            hints[k] = Hint(mask=mask[None] if mask.ndim == 2 else mask)
        placement = Placement(tuple(hints), strength, steer) if any(h is not None for h in hints) else None
        out = [[cond, {**extra, PLACEMENT_KEY: placement}] for cond, extra in positive]
        return io.NodeOutput(out)
