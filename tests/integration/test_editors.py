"""The light-and-shadow layers in real editors (slow tier): LayerFusion Save Layers writes a lit set
as PSD and as OpenRaster; GIMP 2.10 and Krita 5 open each file and flatten it; the flattened image is
the composite within 1/255 (8 bits, per channel) wherever the foreground is not opaque.

The same set is also written with the two layers in "normal" mode: the editors' flattening of that
must miss the composite, so the bound cannot hold by accident (a wrongly written blend mode fails).
A set of two objects (``foregrounds`` 2: both above the two layers) goes through the same editor runs
and must flatten to its composite within 1/255 wherever no object is opaque.
Skipped, with the reason, where an editor is not installed; a format an editor cannot open here
(GIMP on Debian bookworm has no OpenRaster loader) is skipped by name.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import pytest
import torch

from layerfusion.layerfusion_core import layered_files, light_shadow
from layerfusion.nodes.layers import FILES_KEY, LayerFusionSaveLayers
from support.editors import gimp_flatten, gimp_missing, krita_flatten, krita_missing
from support.flattening import lit_objects, lit_scene
from support.layered_readers import real_objects, real_rgba

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

EDITORS = {"gimp": (gimp_missing, gimp_flatten), "krita": (krita_missing, krita_flatten)}


@pytest.fixture(scope="module")
def flattened(tmp_path_factory):
    """{(editor, format, "lit", "normal" or "two"): flattened RGB or why not}, and per case but "normal" the
    set's 8-bit composite and where the layers below the objects show (no object opaque) or nothing does."""
    import folder_paths

    out = tmp_path_factory.mktemp("editors")
    before = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(out))
    try:
        fg = torch.from_numpy(real_rgba()).float()[None] / 255.0
        background, composite = lit_scene(fg[0], seed=7)
        mask = torch.rand(1, 128, 128, generator=torch.Generator().manual_seed(7))
        saved = LayerFusionSaveLayers.execute(fg, background, "psd and ora", "lit", composite=composite, mask=mask,
                                              light_and_shadow=True).ui[FILES_KEY]
        objects = torch.from_numpy(real_objects()).float() / 255.0
        background_two, composite_two = lit_objects(objects, seed=7)
        saved_two = LayerFusionSaveLayers.execute(objects, background_two, "psd and ora", "two", composite=composite_two,
                                                  light_and_shadow=True, foregrounds=2).ui[FILES_KEY]
    finally:
        folder_paths.set_output_directory(before)
    files = {("lit", entry["format"]): out / entry["subfolder"] / entry["filename"] for entry in saved}
    files.update({("two", entry["format"]): out / entry["subfolder"] / entry["filename"] for entry in saved_two})
    layers = layered_files.set_layers(fg[0], background[0], composite[0], mask[0], light_and_shadow=True)
    wrong = [dataclasses.replace(layer, blend=light_shadow.NORMAL) for layer in layers]  # the blend modes left out
    for kind in layered_files.FORMATS:
        files[("normal", kind)] = out / f"normal.{kind}"
        layered_files.WRITERS[kind](files[("normal", kind)], wrong)
    results = {}
    for editor, (missing, flatten) in EDITORS.items():
        if missing():
            results.update({(editor, kind, case): missing() for case, kind in files})
            continue
        start = time.monotonic()
        got = flatten(list(files.values()), out)
        log.info("%s flattened %d files in %.1f s", editor, len(files), time.monotonic() - start)
        results.update({(editor, kind, case): got[path] for (case, kind), path in files.items()})
    alpha, alphas = real_rgba()[..., 3], real_objects()[..., 3]
    references = {"lit": (layered_files.to_uint8(composite[0]).astype(int), alpha < 255, alpha == 0),
                  "two": (layered_files.to_uint8(composite_two[0]).astype(int), (alphas < 255).all(axis=0), (alphas == 0).all(axis=0))}
    return results, references


@pytest.mark.parametrize("kind", layered_files.FORMATS)
@pytest.mark.parametrize("editor", list(EDITORS))
@pytest.mark.parametrize("case", ["lit", "two"])  # one object; two objects, both above the two layers
def test_the_editors_flattening_is_the_composite_where_no_object_is_opaque(flattened, editor, kind, case):
    results, references = flattened
    got = results[(editor, kind, case)]
    if isinstance(got, str):
        pytest.skip(f"{editor}, {kind}: {got}")
    composite, shows, clear = references[case]
    error = np.abs(got.astype(int) - composite).max(axis=-1)
    log.info("%s %s, %s: max error %d/255 where no object is opaque, %d/255 where all are clear", editor, kind, case,
             error[shows].max(), error[clear].max())
    assert shows.sum() > 1000 and clear.sum() > 1000
    assert error[shows].max() <= 1, f"{editor} {kind}: {int((error[shows] > 1).sum())} pixels off by up to {error[shows].max()}/255"
    assert error[clear].max() <= 1
    if case == "lit":
        normal = results[(editor, kind, "normal")]
        assert np.abs(normal.astype(int) - composite).max(axis=-1)[shows].max() > 10  # the blend modes are what does it
