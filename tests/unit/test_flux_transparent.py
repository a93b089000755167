"""The FLUX transparent VAE (issue 10) on plain tensors: the variant table, detection from shapes,
strict layouts, channel orders, the encoder's input order and offset scale, and the converter of
the pickled TransparentVAE.pth (weights_only, refusing anything but a flat dict of tensors)."""

from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from layerfusion.layerfusion_core.transparency import codec, flux_convert
from layerfusion.layerfusion_core.transparency.loading import expected_shapes, layout_problem
from layerfusion.layerfusion_core.transparency.networks import LatentOffsetEncoder, TransparentDecoder
from layerfusion.layerfusion_core.transparency.variants import (
    FLUX,
    SDXL,
    VARIANTS,
    UnknownVariantError,
    detect_variant,
)
from layerfusion_dev.paths import REPO
from layerfusion_dev.testnodes import standins

SCRIPT = REPO / "scripts" / "convert_flux_transparent_vae.py"


def flux_layout(prefix: str) -> dict[str, list[int]]:
    return {k[len(prefix):]: v for k, v in standins.layout()[standins.FLUX_PTH_LAYOUT].items() if k.startswith(prefix)}


# ---- the variant table and detection ----------------------------------------------------------
def test_the_table_holds_what_differs_between_sdxl_and_flux():
    assert (SDXL.latent_channels, SDXL.decoder_output_order, SDXL.encoder_input_order, SDXL.offset_scale) == (4, "argb", "argb", 1.0)
    assert (FLUX.latent_channels, FLUX.decoder_output_order, FLUX.encoder_input_order, FLUX.offset_scale) == (16, "rgba", "rgba", 300.0)
    assert SDXL.to_rgba == [1, 2, 3, 0] and FLUX.to_rgba == [0, 1, 2, 3]
    assert SDXL.encoder_planes() == ["a", "rgb"] and FLUX.encoder_planes() == ["rgb", "a"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        FLUX.latent_channels = 4  # type: ignore[misc]


@pytest.mark.parametrize("module_cls,variant,real", [
    (TransparentDecoder, SDXL, lambda: standins.layout()[standins.DECODER_FILE]),
    (LatentOffsetEncoder, SDXL, lambda: standins.layout()[standins.ENCODER_FILE]),
    (TransparentDecoder, FLUX, lambda: flux_layout("decoder.")),
    (LatentOffsetEncoder, FLUX, lambda: flux_layout("encoder.")),
])
def test_modules_of_each_variant_have_the_published_layout_and_are_detected_from_it(module_cls, variant, real):
    module = module_cls(variant=variant)
    assert {k: list(v.shape) for k, v in module.state_dict().items()} == real()
    assert {k: list(v) for k, v in expected_shapes(module_cls, variant).items()} == real()
    assert detect_variant(real()) is variant  # from the shapes alone


def test_flux_decoder_and_encoder_load_strictly_and_refuse_a_wrong_layout():
    decoder_state = standins.load_flux_part_standin("decoder.")  # drawn once per session
    TransparentDecoder(variant=FLUX).load_state_dict(decoder_state, strict=True)
    LatentOffsetEncoder(variant=FLUX).load_state_dict(standins.flux_part_standin("encoder."), strict=True)
    with pytest.raises(RuntimeError, match="size mismatch for latent_conv_in.weight"):
        TransparentDecoder(variant=SDXL).load_state_dict(decoder_state, strict=True)  # FLUX file, SDXL module
    wanted = expected_shapes(TransparentDecoder, FLUX)
    got = {k: tuple(v.shape) for k, v in decoder_state.items()}
    assert layout_problem(wanted, got, "decoder") is None
    missing = {k: v for k, v in got.items() if k != "conv_out.bias"}
    assert "1 tensors are missing (e.g. ['conv_out.bias'])" in layout_problem(wanted, missing, "decoder")
    extra = {**got, "conv_out.extra": (4,)}
    assert "1 are unexpected (e.g. ['conv_out.extra'])" in layout_problem(wanted, extra, "decoder")
    wrong = {**got, "conv_in.weight": (32, 4, 3, 3)}
    assert "1 tensors have the wrong shape (e.g. conv_in.weight: (32, 4, 3, 3), expected (32, 3, 3, 3))" in layout_problem(wanted, wrong, "decoder")


def test_detection_refuses_unknown_channel_counts_and_foreign_tensors():
    with pytest.raises(UnknownVariantError, match=r"latent_conv_in.weight has shape \[64, 8, 1, 1\]: 8 latent channels, known: 4 \(SDXL\), 16 \(FLUX\)"):
        detect_variant({"latent_conv_in.weight": [64, 8, 1, 1]})
    with pytest.raises(UnknownVariantError, match="blocks.16.weight has shape"):
        detect_variant({"blocks.16.weight": [32, 256, 3, 3]})
    with pytest.raises(UnknownVariantError, match="has neither"):
        detect_variant({"conv.weight": [1]})
    assert {v.latent_channels for v in VARIANTS} == {4, 16}


# ---- channel orders --------------------------------------------------------------------------
@pytest.mark.parametrize("variant,marked_channel", [pytest.param(SDXL, 0, marks=pytest.mark.slow), (FLUX, 3)])  # the alpha channel of each decoder
def test_the_decoders_alpha_channel_lands_in_rgba_alpha(variant, marked_channel):
    """A real decoder module whose conv_out makes one output channel a constant 0.9 and the others 0.1:
    decode_rgba must put that channel last (alpha) for both variants."""
    decoder = TransparentDecoder(variant=variant).eval()
    with torch.no_grad():
        decoder.conv_out.weight.zero_()
        decoder.conv_out.bias.fill_(0.1)
        decoder.conv_out.bias[marked_channel] = 0.9
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    latent = torch.randn(1, variant.latent_channels, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        rgba = codec.decode_rgba(decoder, pixels, latent, size_multiple=64, variant=variant)
        from_pixels = codec.decode_rgba(decoder, pixels, None, size_multiple=64, variant=variant,
                                               augmentations=codec.IDENTITY)
    for out in (rgba, from_pixels):
        assert torch.allclose(out[:, 3], torch.full_like(out[:, 3], 0.9), atol=1e-5)
        assert torch.allclose(out[:, :3], torch.full_like(out[:, :3], 0.1), atol=1e-5)


def test_a_latent_of_the_other_variant_does_not_pass_through_the_decoder():
    with torch.no_grad(), pytest.raises(RuntimeError):
        TransparentDecoder(variant=FLUX)(torch.rand(1, 3, 64, 64), torch.zeros(1, 4, 8, 8))


# ---- the encoder path ------------------------------------------------------------------------
def test_encoder_input_order_and_offset_scale():
    gen = torch.Generator().manual_seed(2)
    rgb, alpha = torch.rand(2, 3, 16, 16, generator=gen), (torch.rand(2, 1, 16, 16, generator=gen) > 0.5).float()
    padded = codec.pad_rgb(rgb, alpha)
    assert torch.equal(codec.encoder_input(rgb, alpha, SDXL), torch.cat([alpha, padded], dim=1))
    assert torch.equal(codec.encoder_input(rgb, alpha, FLUX), torch.cat([padded, alpha], dim=1))
    mean, std, offset = torch.randn(3, 2, 16, 2, 2, generator=gen)
    assert torch.allclose(codec.offset_latent(mean, std, offset, FLUX), mean + std * offset * 300.0)
    assert torch.equal(codec.offset_latent(mean[:, :4], std[:, :4], offset[:, :4], SDXL), mean[:, :4] + std[:, :4] * offset[:, :4])
    with torch.no_grad():
        assert LatentOffsetEncoder(variant=FLUX)(torch.rand(1, 4, 64, 96)).shape == (1, 16, 8, 12)


# ---- the converter -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A stand-in TransparentVAE.pth written as the authors did: torch.save of a state dict (real
    names and shapes of decoder.* and encoder.*, bf16, plus a token sd_vae.*)."""
    state = standins.flux_pth_standin(seed=5)
    path = tmp_path_factory.mktemp("pth") / "TransparentVAE.pth"
    torch.save(state, path)
    return path, state


def test_the_converter_writes_two_safetensors_files_without_prefixes_or_the_vae(published, tmp_path):
    path, state = published
    done = flux_convert.convert(str(path), str(tmp_path / "layer_model"))
    assert Path(done.decoder).name == standins.FLUX_DECODER_FILE and Path(done.encoder).name == standins.FLUX_ENCODER_FILE
    assert done.dropped == len(standins.FLUX_VAE_STANDIN)
    decoder, encoder = load_file(done.decoder), load_file(done.encoder)
    assert set(decoder) == set(flux_layout("decoder.")) and set(encoder) == set(flux_layout("encoder."))
    assert all(torch.equal(decoder[k], state[f"decoder.{k}"]) and decoder[k].dtype == torch.bfloat16 for k in decoder)
    assert all(torch.equal(encoder[k], state[f"encoder.{k}"]) for k in encoder)
    assert detect_variant({k: v.shape for k, v in decoder.items()}) is FLUX
    assert detect_variant({k: v.shape for k, v in encoder.items()}) is FLUX
    TransparentDecoder(variant=FLUX).load_state_dict(decoder, strict=True)
    with pytest.raises(flux_convert.ConvertError, match="already exists; pass --overwrite"):
        flux_convert.convert(str(path), str(tmp_path / "layer_model"))
    assert not list((tmp_path / "layer_model").glob("*.tmp"))


def _record_that_it_ran(marker: str) -> str:  # what the malicious pickle's reduce would call
    Path(marker).write_text("executed")
    return "payload"


class Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_record_that_it_ran, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the protocol-5 file, before refusing it
def test_an_arbitrary_pickled_object_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "ran.txt"
    path = tmp_path / "TransparentVAE.pth"
    torch.save({"decoder.conv_in.weight": torch.zeros(1), "evil": Payload(str(marker))}, path)
    plain = tmp_path / "plain_pickle.pth"
    with open(plain, "wb") as f:  # a bare pickle (not torch's zip format) with the same reduce
        pickle.dump(Payload(str(marker)), f, protocol=2)
    newer = tmp_path / "protocol5.pth"
    with open(newer, "wb") as f:  # refused even earlier (an opcode torch's restricted unpickler lacks)
        pickle.dump(Payload(str(marker)), f, protocol=5)
    for bad in (path, plain, newer):
        with pytest.raises(flux_convert.ConvertError, match=r"refused by torch.load\(weights_only=True\)") as err:
            flux_convert.convert(str(bad), str(tmp_path / "out"))
        assert "\n" not in str(err.value) and "\x1b" not in str(err.value)
        if bad is not newer:
            assert "GLOBAL" in str(err.value) and "_record_that_it_ran" in str(err.value)  # the call it refused
    assert not marker.exists()  # the reduce never ran
    assert not (tmp_path / "out").exists()  # and nothing was written


@pytest.mark.parametrize("content,message", [
    ([torch.zeros(2)], "holds a list, expected a flat dict of tensors"),
    ({"decoder.conv_in.weight": {"nested": torch.zeros(1)}}, "1 entries are not named tensors"),
    ({"decoder.conv_in.weight": 3}, "1 entries are not named tensors"),
    ({"model.diffusion_model.x": torch.zeros(1)}, "1 tensors are neither decoder.*, encoder.* nor sd_vae.*"),
])
def test_contents_other_than_a_flat_state_dict_are_refused(tmp_path, content, message):
    path = tmp_path / "TransparentVAE.pth"
    torch.save(content, path)
    with pytest.raises(flux_convert.ConvertError, match=message.replace("*", r"\*").replace(".", r"\.")):
        flux_convert.convert(str(path), str(tmp_path / "out"))


def test_a_state_dict_of_the_wrong_layout_is_refused(published, tmp_path):
    _, state = published
    sdxl_like = {k: v for k, v in state.items() if k != "encoder.blocks.16.weight"}
    sdxl_like["encoder.blocks.16.weight"] = torch.zeros(4, 256, 3, 3)
    path = tmp_path / "TransparentVAE.pth"
    torch.save({k: sdxl_like[k] for k in sorted(sdxl_like) if not k.startswith("decoder.")} | {
        k: v for k, v in state.items() if k.startswith("decoder.")}, path)
    with pytest.raises(flux_convert.ConvertError, match=r"encoder\.\* tensors do not fit the FLUX transparent encoder: 1 tensors have "
                                                        r"the wrong shape \(e\.g\. blocks\.16\.weight: \(4, 256, 3, 3\)"):
        flux_convert.convert(str(path), str(tmp_path / "out"))


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LAYERFUSION_MODELS"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow  # three processes that import torch; the conversion itself is tested in process above
def test_the_command_converts_and_fails_in_one_line(published, tmp_path):
    path, _ = published
    out = tmp_path / "models" / "layer_model"
    done = run_script(str(path), "--out-dir", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"wrote {out / standins.FLUX_DECODER_FILE} and {out / standins.FLUX_ENCODER_FILE} "
                                        f"(left out {len(standins.FLUX_VAE_STANDIN)} sd_vae.* tensors)"]
    bad = tmp_path / "bad.pth"
    with open(bad, "wb") as f:
        pickle.dump(Payload(str(tmp_path / "ran.txt")), f, protocol=2)
    refused = run_script(str(bad), "--out-dir", str(tmp_path / "other"))
    assert refused.returncode == 1 and refused.stdout == "" and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert refused.stderr.startswith("convert_flux_transparent_vae: bad.pth: refused by torch.load(weights_only=True)")
    assert not (tmp_path / "ran.txt").exists()
    missing = run_script(str(tmp_path / "nowhere.pth"), "--out-dir", str(out))
    assert missing.returncode == 1 and "no such file" in missing.stderr
