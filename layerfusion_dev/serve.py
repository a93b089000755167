"""`make serve`: the ComfyUI host with this pack loaded and its web UI on http://127.0.0.1:8188.

Models come from --models / LAYERFUSION_MODELS (a ComfyUI models folder) and the host's own
models/. The test-only tiny-model loader is offered too (category LayerFusion/testing), so the
pack's nodes can be tried without any weights. Stop with Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from layerfusion_dev.comfy_server import ComfyServer  # noqa: E402
from layerfusion_dev.paths import REPO, comfyui_dir  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=int(os.environ.get("LAYERFUSION_PORT", "8188")))
    parser.add_argument("--models", type=Path, default=os.environ.get("LAYERFUSION_MODELS"))
    parser.add_argument("--no-test-nodes", action="store_true", help="do not offer the tiny test-model loader")
    args = parser.parse_args()
    models_dirs = [p for p in (args.models, comfyui_dir() / "models") if p is not None]
    base = REPO / ".cache" / "serve"
    server = ComfyServer(test_nodes=not args.no_test_nodes, models_dirs=models_dirs, port=args.port,
                         base_dir=base, output_dir=REPO / "output", startup_timeout=300)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with server:
        sys.stdout.write(f"ComfyUI with LayerFusion: {server.url}  (log: {server.log_path}; Ctrl-C stops it)\n")
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
