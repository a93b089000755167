"""Inside ComfyUI: the missing-file error says where a known file belongs, where to get it and
which command fetches it; the download helper aims at ComfyUI's own models folder."""

from __future__ import annotations

import os
import re

import pytest

from layerfusion.layerfusion_core.weights import downloads, known_files


def test_a_missing_known_file_names_the_folder_the_url_and_the_command():
    import folder_paths

    name = "vae_transparent_decoder.safetensors"
    with pytest.raises(FileNotFoundError) as err:
        known_files.resolve(name)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{name} is not in ComfyUI's layer_model or loras folders.")
    assert f"https://huggingface.co/LayerDiffusion/layerdiffusion-v1/resolve/main/{name} into ComfyUI/models/layer_model/" in message
    assert f"(here: {os.path.join(folder_paths.models_dir, 'layer_model')})" in message
    command = re.search(r"`python (\S+) (\S+)`", message)
    assert command and command.group(2) == name and os.path.isfile(command.group(1))
    assert command.group(1) == known_files.DOWNLOAD_SCRIPT
    assert message.endswith(", then refresh.")


def test_an_unknown_missing_file_gets_no_download_hint():
    with pytest.raises(FileNotFoundError) as err:
        known_files.resolve("my_style.safetensors")
    assert "download_models" not in str(err.value) and "Put it in ComfyUI/models/layer_model/" in str(err.value)


def test_inside_comfyui_the_helper_uses_comfyuis_models_folder():
    import folder_paths

    assert downloads.default_models_dir() == folder_paths.models_dir
    known = known_files.KNOWN_BY_NAME["vae_transparent_decoder.safetensors"]
    expected = os.path.realpath(os.path.join(folder_paths.models_dir, "layer_model"))
    assert downloads.target_folder(known) == expected  # computed only: nothing is downloaded or created here
