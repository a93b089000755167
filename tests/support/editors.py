"""Real editors flattening layered files: GIMP 2.10 in batch mode (Script-Fu: load, flatten, export a
PNG) and Krita 5 through kritarunner (`support.krita_flatten`). One editor start per call, for every
file at once (GIMP's batch start is a few seconds, Krita's up to about 20 on a cold cache).

The editors' profiles (settings, font caches) live in the repository's .cache/editors, so only the
first run pays their cold start. Each returns, per file, its flattened RGB ``[H, W, 3]`` uint8, or why the editor could not open it
(a string). Debian bookworm's GIMP 2.10.34 has no OpenRaster loader (GIMP 2.10's is a Python 2
plug-in, which bookworm does not ship): GIMP answers that for .ora files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from .layered_readers import png_pixels

EDITOR_TIMEOUT_S = 180
PROFILES = Path(__file__).resolve().parents[2] / ".cache" / "editors"
GIMP_LOADERS = {".psd": "file-psd-load", ".ora": "file-openraster-load"}


def gimp_missing() -> str | None:
    return None if shutil.which("gimp") else "gimp is not installed: run `make editors` (Debian: apt-get install gimp)"


def krita_missing() -> str | None:
    return None if shutil.which("kritarunner") else "kritarunner is not installed: run `make editors` (Debian: apt-get install krita)"


def _scheme(text: str) -> str:
    if '"' in text or "\\" in text:
        raise ValueError(f"{text!r}: a path Script-Fu would need escaped")
    return f'"{text}"'


def gimp_flatten(files: list[Path], out_dir: Path) -> dict[Path, np.ndarray | str]:
    """Each file loaded by GIMP, flattened (hidden layers dropped) and exported as PNG, in one batch run."""
    probes = " ".join(
        f'(gimp-message (string-append "loader {suffix} " (number->string (car (gimp-procedural-db-proc-exists {_scheme(proc)})))))'
        for suffix, proc in GIMP_LOADERS.items())
    steps = []
    for index, path in enumerate(files):
        out = out_dir / f"gimp_{index}.png"
        steps.append(
            f"(if (= 1 (car (gimp-procedural-db-proc-exists {_scheme(GIMP_LOADERS[path.suffix])}))) "
            f"(let* ((image (car (gimp-file-load RUN-NONINTERACTIVE {_scheme(str(path))} {_scheme(str(path))}))) "
            f"(flat (car (gimp-image-flatten image)))) "
            f"(file-png-save2 RUN-NONINTERACTIVE image flat {_scheme(str(out))} {_scheme(str(out))} 0 9 0 0 0 0 0 0 0) "
            f"(gimp-image-delete image)))")
    done = subprocess.run(["gimp", "-i", "-d", "-f", "-b", f"(begin {probes} {' '.join(steps)})", "-b", "(gimp-quit 0)"],
                          capture_output=True, text=True, timeout=EDITOR_TIMEOUT_S, env={**os.environ, "GIMP2_DIRECTORY": str(PROFILES / "gimp")})
    log = done.stdout + done.stderr
    results: dict[Path, np.ndarray | str] = {}
    for index, path in enumerate(files):
        out = out_dir / f"gimp_{index}.png"
        if out.is_file():
            results[path] = png_pixels(out)[..., :3]
        elif f"loader {path.suffix} 0" in log:
            results[path] = f"GIMP here has no {path.suffix} loader ({GIMP_LOADERS[path.suffix]})"
        else:
            raise RuntimeError(f"GIMP did not flatten {path.name} (exit {done.returncode}):\n{log[-3000:]}")
    return results


def krita_flatten(files: list[Path], out_dir: Path) -> dict[Path, np.ndarray | str]:
    """Each file opened by Krita and its projection read back, in one kritarunner run."""
    outs = [out_dir / f"krita_{index}.raw" for index in range(len(files))]
    home = PROFILES / "krita"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": str(Path(__file__).parent),
           "XDG_RUNTIME_DIR": str(out_dir / "xdg"), "HOME": str(home)}
    (out_dir / "xdg").mkdir(mode=0o700, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    pairs = [str(p) for path, out in zip(files, outs) for p in (path, out)]
    done = subprocess.run(["kritarunner", "-s", "krita_flatten", "-f", "main", *pairs], capture_output=True, text=True,
                          timeout=EDITOR_TIMEOUT_S, env=env)
    results: dict[Path, np.ndarray | str] = {}
    for path, out in zip(files, outs):
        if not out.is_file():
            raise RuntimeError(f"Krita did not flatten {path.name} (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
        header, data = out.read_bytes().split(b"\n", 1)
        width, height = (int(v) for v in header.split())
        results[path] = np.frombuffer(data, np.uint8).reshape(height, width, 4)[..., [2, 1, 0]]  # BGRA -> RGB
    return results
