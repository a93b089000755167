"""Fetching one missing LayerDiffuse file from Hugging Face into ComfyUI's models folder, verified.

Only files of `weight_files.KNOWN_FILES` are fetched, by their plain names, at the table's pinned
revision, and only into `<models>/<folder>/` (`layer_model`): the bytes land in a temporary folder
inside that folder, their sha256 is checked by streaming the file, and only then is the file
renamed into place (atomically). A file the table has no pinned revision and sha256 for yet is
refused unless the caller asks to trust the sha256 the Hub reports (`trust_hub_hash`).

Every failure is one `DownloadError` whose message is one line naming the file, the URL and the
folder to put it in by hand; details go to this module's logger at debug level. huggingface_hub
is imported only when a download starts, so the pack loads without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
from types import ModuleType
from typing import NoReturn
from urllib.parse import urlsplit

from .known_files import CONVERT_SCRIPT, KNOWN_BY_NAME, PACK_DIR, KnownFile

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".layerfusion-download-"  # temporary folders inside the target folder
MODELS_ENV = "LAYERFUSION_MODELS"  # the models folder `make demo` reads, used when nothing else is found
_CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
SOURCES = {"pinned": "pinned in weight_files.KNOWN_FILES", "hub": "as the Hub reports it, not pinned"}  # of a sha256


class DownloadError(Exception):
    """A download that did not happen; the message is one line that says what to do instead."""


@dataclasses.dataclass(frozen=True)
class DownloadResult:
    path: str  # where the file is now
    downloaded: bool  # False when it was already there
    sha256: str | None = None  # the verified sha256 (None when nothing was downloaded)
    revision: str | None = None  # the commit it was downloaded at
    hash_source: str | None = None  # "pinned" (weight_files table) or "hub" (trusted Hub metadata)


def known_download(name: str) -> KnownFile:
    """The table entry for ``name``, which must be a plain file name this pack knows."""
    if not isinstance(name, str) or not name or name in (".", ".."):
        raise DownloadError(f"{name!r}: not a file name")
    bad = ("/", "\\", "\x00", "..") + tuple(s for s in (os.sep, os.altsep) if s)
    if any(part in name for part in bad) or os.path.isabs(name):
        raise DownloadError(f"{name!r}: only a plain file name is accepted (no folders, no '..'); see --list")
    known = KNOWN_BY_NAME.get(name)
    if known is None:
        raise DownloadError(f"{name}: not a file this pack knows; known: {', '.join(sorted(KNOWN_BY_NAME))}")
    if known.converted_from is not None:
        raise DownloadError(f"{name}: is not published as such: download {known.converted_from} from {known.url} and convert "
                            f"it with `python {CONVERT_SCRIPT} {known.converted_from}`")
    return known


def models_dir_above_pack(pack_dir: str = PACK_DIR) -> str | None:
    """``<ComfyUI>/models`` when the pack sits in ``<ComfyUI>/custom_nodes/``, else None."""
    parent = os.path.dirname(os.path.abspath(pack_dir))
    if os.path.basename(parent) != "custom_nodes":
        return None
    models = os.path.join(os.path.dirname(parent), "models")
    return models if os.path.isdir(models) else None


def default_models_dir() -> str:
    """ComfyUI's models folder: folder_paths' inside ComfyUI, else the one above custom_nodes/,
    else $LAYERFUSION_MODELS."""
    folder_paths = sys.modules.get("folder_paths")
    if folder_paths is not None:
        return folder_paths.models_dir
    found = models_dir_above_pack() or os.environ.get(MODELS_ENV)
    if not found:
        raise DownloadError(f"no ComfyUI models folder found (this pack is not in ComfyUI/custom_nodes/ and "
                            f"{MODELS_ENV} is not set); pass --models-dir")
    return found


def target_folder(known: KnownFile, models_dir: str | None = None) -> str:
    """The real path of ``<models_dir>/<known.folder>`` (it may not exist yet). A folder that is a
    link (models kept on another disk) is followed: it is the user's own choice of place."""
    models = os.path.realpath(models_dir or default_models_dir())
    if not os.path.isdir(models):
        raise DownloadError(f"{known.name}: the models folder {models} does not exist")
    folder = os.path.join(models, known.folder)
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise DownloadError(f"{known.name}: {folder} is not a folder (a broken link?); fix it first")
    return os.path.realpath(folder)


def is_inside(path: str, folder: str) -> bool:
    """True when ``path``, all links resolved, lies inside ``folder`` (itself a real path)."""
    real = os.path.realpath(path)
    return real != folder and os.path.commonpath([real, folder]) == folder


def sha256_of(path: str) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(name: str, models_dir: str | None = None, *, trust_hub_hash: bool = False, force: bool = False,
             endpoint: str | None = None) -> DownloadResult:
    """Download the known file ``name`` into ``<models_dir>/<its folder>/`` and verify its sha256.

    ``models_dir`` defaults to ComfyUI's (see `default_models_dir`); ``endpoint`` to huggingface_hub's
    (HF_ENDPOINT). A file already in place is left alone unless ``force``. Raises `DownloadError`."""
    known = known_download(name)
    folder = target_folder(known, models_dir)
    dest = os.path.join(folder, known.name)
    _check_destination(known, dest, folder)
    if os.path.isfile(dest) and not force:
        logger.info("%s is already in %s", known.name, folder)
        return DownloadResult(dest, downloaded=False)
    hub = _import_hub(known, folder)
    revision = known.revision or "main"
    url = hub.hf_hub_url(known.repo, known.name, revision=revision, endpoint=endpoint)
    fail = _Failure(known, url, folder)
    if not known.pinned and not trust_hub_hash:
        fail.say("it has no pinned revision and sha256 in weight_files.KNOWN_FILES yet, so the download cannot be "
                 "verified (pass --trust-hub-hash to accept the sha256 the Hub reports)")
    if hub.constants.HF_HUB_OFFLINE:
        fail.say("huggingface_hub is in offline mode (HF_HUB_OFFLINE is set)")
    expected, source, commit = _expected_hash(hub, known, url, endpoint, fail)
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=folder)
    try:
        try:
            got = hub.hf_hub_download(known.repo, known.name, revision=commit, local_dir=tmp, endpoint=endpoint)
        except Exception as err:  # huggingface_hub's and its HTTP client's errors alike
            fail.say(_reason(err, url), err)
        if not is_inside(got, os.path.realpath(tmp)) or not os.path.isfile(got):
            fail.say("huggingface_hub put the file outside the temporary download folder; nothing was kept")
        actual = sha256_of(got)
        if actual != expected:
            fail.say(f"sha256 mismatch: got {actual}, expected {expected} ({SOURCES[source]}); the download was deleted")
        _check_destination(known, dest, folder)
        os.replace(got, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("%s: downloaded into %s at commit %s, sha256 %s verified (%s)", known.name, folder, commit, actual,
                SOURCES[source])
    return DownloadResult(dest, downloaded=True, sha256=actual, revision=commit, hash_source=source)


class _Failure:
    """Raises the one-line `DownloadError` for one file: the reason, then where to get it by hand."""

    def __init__(self, known: KnownFile, url: str, folder: str) -> None:
        self.known, self.url, self.folder = known, url, folder

    def say(self, reason: str, err: BaseException | None = None) -> NoReturn:
        if err is not None:
            logger.debug("%s: download failed", self.known.name, exc_info=err)
        message = f"{self.known.name}: {reason}; download {self.url} by hand and put it in {self.folder}"
        raise DownloadError(message) from None


def _check_destination(known: KnownFile, dest: str, folder: str) -> None:
    if not is_inside(dest, folder):
        raise DownloadError(f"{known.name}: {dest} leads outside {folder} (a link?); refusing to write there")


def _import_hub(known: KnownFile, folder: str) -> ModuleType:
    try:
        import huggingface_hub.constants  # binds huggingface_hub, with its constants module loaded
    except ImportError:
        raise DownloadError(f"{known.name}: huggingface_hub is not installed (pip install huggingface_hub); or "
                            f"download {known.url} by hand and put it in {folder}") from None
    return huggingface_hub


def _expected_hash(hub: ModuleType, known: KnownFile, url: str, endpoint: str | None,
                   fail: _Failure) -> tuple[str, str, str]:
    """The sha256 to verify against, where it comes from, and the commit to download. Asks the Hub
    for the file's metadata first: this fails fast when the Hub cannot be reached."""
    try:
        meta = hub.get_hf_file_metadata(url, endpoint=endpoint)
    except Exception as err:  # huggingface_hub's and its HTTP client's errors alike
        fail.say(_reason(err, url), err)
    commit = (meta.commit_hash or "").lower()
    if not _COMMIT.fullmatch(commit):
        fail.say("the server did not name the commit it serves (no X-Repo-Commit header); is HF_ENDPOINT a Hub?")
    if known.revision is not None and commit != known.revision:
        fail.say(f"the Hub served commit {commit} for the pinned revision {known.revision}")
    hub_sha = (meta.etag or "").lower()
    hub_sha = hub_sha if _SHA256.fullmatch(hub_sha) else None
    if known.sha256 is not None:
        if hub_sha is not None and hub_sha != known.sha256:
            fail.say(f"the Hub reports sha256 {hub_sha} at commit {commit}, the pinned one is {known.sha256}")
        return known.sha256, "pinned", commit
    if hub_sha is None:
        fail.say("the Hub reports no sha256 for it (not an LFS file), so it cannot be verified")
    logger.warning("%s: no sha256 is pinned for it; verifying against the sha256 the Hub reports, %s (commit %s)",
                   known.name, hub_sha, commit)
    return hub_sha, "hub", commit


def _reason(err: BaseException, url: str) -> str:
    """One line saying why the Hub could not be used."""
    name = type(err).__name__
    if name == "OfflineModeIsEnabled":
        return "huggingface_hub is in offline mode (HF_HUB_OFFLINE is set)"
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status in (401, 403):
        return f"the Hub refused access (HTTP {status})"
    if status == 404:
        return "the Hub has no such file at that revision (HTTP 404)"
    if isinstance(status, int):
        return f"the Hub answered HTTP {status}"
    cause = err.__cause__ or err.__context__
    detail = cause if name == "LocalEntryNotFoundError" and cause is not None else err
    text = " ".join(str(detail).split()) or type(detail).__name__
    return f"cannot reach {urlsplit(url).netloc} ({text[:160]})"
