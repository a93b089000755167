"""How `make demo` decides between real weights and the tiny model."""

from __future__ import annotations

from layerfusion_dev import demo


def test_no_checkpoint_means_the_tiny_model(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "notes.txt").write_text("not a model")
    assert demo.find_checkpoint([tmp_path, tmp_path / "missing"], None) is None


def test_first_checkpoint_is_used_unless_one_is_named(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    (first / "checkpoints" / "sdxl").mkdir(parents=True)
    (second / "checkpoints").mkdir(parents=True)
    (first / "checkpoints" / "sdxl" / "RealVisXL_V4.0.safetensors").write_bytes(b"")
    (second / "checkpoints" / "other.safetensors").write_bytes(b"")
    assert demo.find_checkpoint([first, second], None) == "sdxl/RealVisXL_V4.0.safetensors"
    assert demo.find_checkpoint([first, second], "other.safetensors") == "other.safetensors"
    assert demo.find_checkpoint([first, second], "absent.safetensors") is None
