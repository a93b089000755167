"""The download helper against a fake Hugging Face endpoint on 127.0.0.1 (no internet needed):
verified downloads land in models/layer_model/ and nowhere else; anything unverifiable, unsafe or
offline is refused in one line that names the file, the URL and the folder."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from layerfusion.layerfusion_core.weights import downloads, known_files
from layerfusion_dev.paths import REPO
from support.fake_hub import COMMIT, FakeHub, closed_port_endpoint, served

NAME = "vae_transparent_encoder.safetensors"
BODY = b"LayerDiffuse encoder stand-in " * 300
REPO_ID = known_files.HF_REPO
SCRIPT = REPO / "scripts" / "download_models.py"


@pytest.fixture
def models(tmp_path: Path) -> Path:
    folder = tmp_path / "ComfyUI" / "models"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture(autouse=True)
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """huggingface_hub's home (cache, token) inside tmp_path, for this test only."""
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    for attr, path in (("HF_HOME", home), ("HF_HUB_CACHE", home / "hub"), ("HF_XET_CACHE", home / "xet"),
                       ("HF_ASSETS_CACHE", home / "assets"), ("HF_TOKEN_PATH", home / "token"),
                       ("HF_STORED_TOKENS_PATH", home / "stored_tokens")):
        if hasattr(constants, attr):
            monkeypatch.setattr(constants, attr, str(path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return home


def pin(monkeypatch: pytest.MonkeyPatch, revision: str | None = COMMIT, sha256: str | None = None) -> None:
    """Fill in the table entry the way a maintainer will (revision and sha256)."""
    known = known_files.KNOWN_BY_NAME[NAME]
    pinned = dataclasses.replace(known, revision=revision, sha256=sha256 or hashlib.sha256(BODY).hexdigest())
    monkeypatch.setitem(known_files.KNOWN_BY_NAME, NAME, pinned)


def tree(root: Path) -> dict[str, bytes | str]:
    """Every path under ``root`` with its bytes (files), its target (links) or "dir"."""
    found: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            found[rel] = path.read_bytes()
        else:
            found[rel] = "dir"
    return found


def outside_hf_home(root: Path) -> dict[str, bytes | str]:
    return {k: v for k, v in tree(root).items() if not k.startswith("hf_home")}


def test_a_verified_download_lands_in_the_folder_and_nowhere_else(tmp_path, models, monkeypatch):
    pin(monkeypatch)
    before = outside_hf_home(tmp_path)
    with FakeHub(REPO_ID, {NAME: served(BODY)}) as hub:
        result = downloads.download(NAME, str(models), endpoint=hub.endpoint)
    dest = models / "layer_model" / NAME
    assert result.downloaded and result.path == str(dest) and dest.read_bytes() == BODY
    assert (result.sha256, result.revision, result.hash_source) == (hashlib.sha256(BODY).hexdigest(), COMMIT, "pinned")
    assert ("GET", f"/{REPO_ID}/resolve/{COMMIT}/{NAME}") in hub.requests  # the pinned commit, not main
    after = outside_hf_home(tmp_path)
    assert set(after) - set(before) == {"ComfyUI/models/layer_model", f"ComfyUI/models/layer_model/{NAME}"}
    assert not (tmp_path / "hf_home").exists()  # nothing in huggingface_hub's cache either


def test_bytes_that_do_not_match_the_pinned_sha256_are_refused_and_leave_no_file(tmp_path, models, monkeypatch):
    pin(monkeypatch)
    tampered = BODY[:-1] + b"!"
    with FakeHub(REPO_ID, {NAME: served(tampered, claimed=BODY)}) as hub:  # the Hub claims the right hash
        before = outside_hf_home(tmp_path)
        with pytest.raises(downloads.DownloadError, match="sha256 mismatch.*the download was deleted") as err:
            downloads.download(NAME, str(models), endpoint=hub.endpoint)
    assert ("GET", f"/{REPO_ID}/resolve/{COMMIT}/{NAME}") in hub.requests  # it was downloaded, then refused
    assert "\n" not in str(err.value)
    assert os.listdir(models / "layer_model") == []  # no file, no temporary folder
    assert outside_hf_home(tmp_path) == {**before, "ComfyUI/models/layer_model": "dir"}


def test_a_hub_hash_that_disagrees_with_the_pinned_one_fails_before_downloading(models, monkeypatch):
    pin(monkeypatch)
    with FakeHub(REPO_ID, {NAME: served(b"another file")}) as hub:
        with pytest.raises(downloads.DownloadError, match=r"the Hub reports sha256 [0-9a-f]{64} at commit .*the pinned one is"):
            downloads.download(NAME, str(models), endpoint=hub.endpoint)
    assert [m for m, _ in hub.requests] == ["HEAD"]
    assert not (models / "layer_model").exists()


def test_a_file_without_pinned_revision_and_sha256_is_refused_unless_trusted(tmp_path, models, caplog):
    assert not known_files.KNOWN_BY_NAME[NAME].pinned  # the shipped table: nothing pinned yet
    with FakeHub(REPO_ID, {NAME: served(BODY)}) as hub:
        with pytest.raises(downloads.DownloadError, match="no pinned revision and sha256.*--trust-hub-hash") as err:
            downloads.download(NAME, str(models), endpoint=hub.endpoint)
        assert hub.requests == [] and not (models / "layer_model").exists()
        assert f"/resolve/main/{NAME} by hand and put it in {models / 'layer_model'}" in str(err.value)
        with caplog.at_level("WARNING"):
            result = downloads.download(NAME, str(models), endpoint=hub.endpoint, trust_hub_hash=True)
    assert (models / "layer_model" / NAME).read_bytes() == BODY
    assert (result.hash_source, result.revision) == ("hub", COMMIT)
    assert ("GET", f"/{REPO_ID}/resolve/{COMMIT}/{NAME}") in hub.requests  # pinned to the commit it was told of
    assert "verifying against the sha256 the Hub reports" in caplog.text


def test_trusting_the_hub_still_refuses_bytes_that_do_not_match_what_it_reports(models):
    with FakeHub(REPO_ID, {NAME: served(BODY + b"x", claimed=BODY + b"y")}) as hub:
        with pytest.raises(downloads.DownloadError, match="sha256 mismatch.*as the Hub reports it"):
            downloads.download(NAME, str(models), endpoint=hub.endpoint, trust_hub_hash=True)
    assert os.listdir(models / "layer_model") == []


def test_trusting_the_hub_needs_a_sha256_from_it(models):
    not_lfs = served(BODY)
    not_lfs.etag = "a" * 40  # a git blob id: the Hub gives no sha256 for files outside LFS
    with FakeHub(REPO_ID, {NAME: not_lfs}) as hub, pytest.raises(downloads.DownloadError, match="reports no sha256"):
        downloads.download(NAME, str(models), endpoint=hub.endpoint, trust_hub_hash=True)
    assert not (models / "layer_model").exists()


def test_an_unreachable_hub_fails_in_one_line_naming_file_url_and_folder(models, monkeypatch):
    pin(monkeypatch)
    endpoint = closed_port_endpoint()
    with pytest.raises(downloads.DownloadError) as err:
        downloads.download(NAME, str(models), endpoint=endpoint)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{NAME}: cannot reach 127.0.0.1:")
    assert f"{endpoint}/{REPO_ID}/resolve/{COMMIT}/{NAME}" in message
    assert str(models / "layer_model") in message
    assert err.value.__suppress_context__  # no chained traceback for the user
    assert not (models / "layer_model").exists()


def test_offline_mode_fails_in_one_line_without_any_request(models, monkeypatch):
    from huggingface_hub import constants

    pin(monkeypatch)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with FakeHub(REPO_ID, {NAME: served(BODY)}) as hub:
        with pytest.raises(downloads.DownloadError, match=r"offline mode \(HF_HUB_OFFLINE is set\); download http") as err:
            downloads.download(NAME, str(models), endpoint=hub.endpoint)
    assert hub.requests == [] and "\n" not in str(err.value) and NAME in str(err.value)


@pytest.mark.parametrize("name", [
    "../" + NAME, "..", ".", "", "layer_model/" + NAME, "sub\\" + NAME, "/etc/passwd", "/" + NAME,
    NAME + "\x00", "..\\..\\" + NAME, "..." + NAME,
])
def test_names_with_folders_or_dots_are_refused(tmp_path, models, monkeypatch, name):
    pin(monkeypatch)
    before = tree(tmp_path)
    with FakeHub(REPO_ID, {NAME: served(BODY)}) as hub, pytest.raises(downloads.DownloadError, match="plain file name|not a file name"):
        downloads.download(name, str(models), endpoint=hub.endpoint)
    assert hub.requests == [] and tree(tmp_path) == before


@pytest.mark.parametrize("name", ["unknown.safetensors", "vae_transparent_encoder.ckpt", "VAE_TRANSPARENT_ENCODER.safetensors"])
def test_names_not_in_the_table_are_refused(tmp_path, models, name):
    before = tree(tmp_path)
    with pytest.raises(downloads.DownloadError, match="not a file this pack knows; known: .*vae_transparent_decoder"):
        downloads.download(name, str(models), endpoint=closed_port_endpoint())
    assert tree(tmp_path) == before


@pytest.mark.parametrize("dangling", [False, True])
def test_a_destination_that_is_a_link_leading_outside_is_refused(tmp_path, models, monkeypatch, dangling):
    pin(monkeypatch)
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "victim.bin"
    if not dangling:
        target.write_bytes(b"not yours")
    (models / "layer_model").mkdir()
    (models / "layer_model" / NAME).symlink_to(target)
    before = tree(tmp_path)
    with FakeHub(REPO_ID, {NAME: served(BODY)}) as hub, pytest.raises(downloads.DownloadError, match="leads outside"):
        downloads.download(NAME, str(models), endpoint=hub.endpoint, force=True)
    assert hub.requests == [] and tree(tmp_path) == before


def test_a_layer_model_folder_that_is_a_broken_link_is_refused(tmp_path, models, monkeypatch):
    pin(monkeypatch)
    (models / "layer_model").symlink_to(tmp_path / "elsewhere" / "layer_model")
    before = tree(tmp_path)
    with pytest.raises(downloads.DownloadError, match="not a folder"):
        downloads.download(NAME, str(models), endpoint=closed_port_endpoint())
    assert tree(tmp_path) == before


def test_a_layer_model_folder_linked_to_another_disk_is_followed(tmp_path, models, monkeypatch):
    pin(monkeypatch)
    disk = tmp_path / "disk2" / "layer_model"
    disk.mkdir(parents=True)
    (models / "layer_model").symlink_to(disk)
    with FakeHub(REPO_ID, {NAME: served(BODY)}) as hub:
        result = downloads.download(NAME, str(models), endpoint=hub.endpoint)
    assert result.path == str(disk / NAME) and (disk / NAME).read_bytes() == BODY
    assert sorted(os.listdir(disk)) == [NAME]


def test_a_file_already_in_place_is_left_alone_unless_forced(models, monkeypatch):
    pin(monkeypatch)
    (models / "layer_model").mkdir()
    (models / "layer_model" / NAME).write_bytes(b"old")
    with FakeHub(REPO_ID, {NAME: served(BODY)}) as hub:
        assert not downloads.download(NAME, str(models), endpoint=hub.endpoint).downloaded
        assert hub.requests == [] and (models / "layer_model" / NAME).read_bytes() == b"old"
        assert downloads.download(NAME, str(models), endpoint=hub.endpoint, force=True).downloaded
    assert (models / "layer_model" / NAME).read_bytes() == BODY


def test_the_models_folder_is_found_above_custom_nodes(tmp_path, monkeypatch):
    pack = tmp_path / "ComfyUI" / "custom_nodes" / "ComfyUI-LayerFusion"
    pack.mkdir(parents=True)
    assert downloads.models_dir_above_pack(str(pack)) is None  # no models/ there yet
    (tmp_path / "ComfyUI" / "models").mkdir()
    assert downloads.models_dir_above_pack(str(pack)) == str(tmp_path / "ComfyUI" / "models")
    assert downloads.models_dir_above_pack(str(tmp_path / "somewhere" / "pack")) is None


def test_the_table_pins_are_well_formed_or_explicitly_missing():
    for known in known_files.KNOWN_FILES:
        assert known.revision is None or (len(known.revision) == 40 and set(known.revision) <= set("0123456789abcdef"))
        assert known.sha256 is None or (len(known.sha256) == 64 and set(known.sha256) <= set("0123456789abcdef"))
        if known.converted_from is None:
            assert known.repo == known_files.HF_REPO and known.revision == known_files.LAYERDIFFUSION_V1_REVISION
        else:  # the FLUX files: converted from RedAIGC's pickled file, never downloaded as such
            assert known.repo == known_files.FLUX_HF_REPO and known.revision is None and known.sha256 is None
            with pytest.raises(downloads.DownloadError, match="convert_flux_transparent_vae.py"):
                downloads.known_download(known.name)
        assert known.pinned == (known.revision is not None and known.sha256 is not None)


def run_command(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LAYERFUSION_MODELS"))}
    environ.update(HF_HOME=str(tmp_path / "hf_home"), **env)
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=environ,
                          cwd=tmp_path, timeout=120)


def test_the_command_downloads_with_trust_and_says_so(tmp_path, models):
    with FakeHub(REPO_ID, {NAME: served(BODY)}) as hub:
        refused = run_command([NAME, "--models-dir", str(models)], tmp_path, HF_ENDPOINT=hub.endpoint)
        done = run_command([NAME, "--models-dir", str(models), "--trust-hub-hash"], tmp_path, HF_ENDPOINT=hub.endpoint)
    assert refused.returncode == 1 and refused.stdout == "" and len(refused.stderr.splitlines()) == 1
    assert "--trust-hub-hash" in refused.stderr
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{NAME}: downloaded into {models / 'layer_model'} (commit {COMMIT}, sha256 "
                                        f"{hashlib.sha256(BODY).hexdigest()}, as the Hub reports it, not pinned)"]
    assert "verifying against the sha256 the Hub reports" in done.stderr
    assert (models / "layer_model" / NAME).read_bytes() == BODY


def test_the_command_offline_prints_one_line_naming_file_url_and_folder(tmp_path, models):
    result = run_command([NAME, "--models-dir", str(models), "--trust-hub-hash"], tmp_path, HF_HUB_OFFLINE="1")
    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode == 1 and len(lines) == 1, lines
    assert lines[0] == (f"download_models: {NAME}: huggingface_hub is in offline mode (HF_HUB_OFFLINE is set); download "
                        f"https://huggingface.co/{REPO_ID}/resolve/main/{NAME} by hand and put it in {models / 'layer_model'}")


def test_the_command_lists_the_known_files(tmp_path, models):
    (models / "layer_model").mkdir()
    (models / "layer_model" / NAME).write_bytes(b"x")
    result = run_command(["--list", "--models-dir", str(models)], tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(known_files.KNOWN_FILES)
    assert any(line.startswith(NAME) and "present" in line for line in lines)
    assert any(line.startswith("vae_transparent_decoder.safetensors") and "missing" in line for line in lines)
    usage = run_command(["--models-dir", str(models)], tmp_path)
    assert usage.returncode == 2 and "name a file" in usage.stderr


def test_without_huggingface_hub_it_says_how_to_get_the_file(models, monkeypatch):
    pin(monkeypatch)
    for module in [m for m in sys.modules if m == "huggingface_hub" or m.startswith("huggingface_hub.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # what an uninstalled package looks like to import
    with pytest.raises(downloads.DownloadError, match=r"huggingface_hub is not installed .*resolve/main/") as err:
        downloads.download(NAME, str(models))
    assert "\n" not in str(err.value) and str(models / "layer_model") in str(err.value)
