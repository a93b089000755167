"""A real ComfyUI server for tests, the demo and `make serve`.

`ComfyServer` starts `main.py --cpu` of the ComfyUI host on 127.0.0.1 and a free port, with its
own temporary base directory (custom_nodes with this pack linked in, models, input, output,
temp, user) and an in-memory database. It fails when the log shows that a pack failed to import,
runs API-format graphs through `/prompt` and `/history`, and always stops the process (use it as
a context manager).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .paths import PACK_NAME, REPO, TEST_NODES, comfyui_dir, pack_inside_host, python

log = logging.getLogger("layerfusion.tests.server")

# How ComfyUI reports a custom node pack that failed to load. Its own optional nodes (the audio
# ones without torchaudio) fail the same way; only lines naming our custom_nodes folder count.
IMPORT_FAILURE_MARKERS = ("(IMPORT FAILED)", "Cannot import", "Error while calling comfy_entrypoint")


class ServerError(RuntimeError):
    """The server did not start, or a prompt failed; the message carries the server's words."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def execution_error(history_entry: dict[str, Any]) -> str:
    """The node, exception type and message of a failed prompt's history entry."""
    for kind, data in history_entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return (f"{data.get('node_type')} (node {data.get('node_id')}): "
                    f"{data.get('exception_type')}: {data.get('exception_message')}")
    return json.dumps(history_entry.get("status", {}))[-2000:]


class ComfyServer:
    def __init__(
        self,
        *,
        test_nodes: bool = True,
        pack: bool = True,
        models_dirs: Iterable[Path] = (),
        output_dir: Path | None = None,
        port: int | None = None,
        base_dir: Path | None = None,
        extra_args: Iterable[str] = (),
        startup_timeout: float = 180.0,
    ) -> None:
        self.host = comfyui_dir()
        self.test_nodes = test_nodes
        self.pack = pack
        self.models_dirs = [Path(p) for p in models_dirs]
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._own_base = base_dir is None
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="layerfusion-comfy-"))
        self.output_dir = Path(output_dir or self.base / "output")
        self.models_dir = self.base / "models"
        self.log_path = self.base / "comfyui.log"
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self._launched = 0.0
        self.client_id = uuid.uuid4().hex

    # ---- lifecycle -------------------------------------------------------------------------
    def _prepare(self) -> Path:
        custom_nodes = self.base / "custom_nodes"
        custom_nodes.mkdir(parents=True, exist_ok=True)
        links = {PACK_NAME: REPO} if self.pack else {}
        if self.test_nodes:
            links["layerfusion_testnodes"] = TEST_NODES
        for name, target in links.items():
            link = custom_nodes / name
            if not link.exists():
                link.symlink_to(target, target_is_directory=True)
        for sub in ("models/checkpoints", "models/layer_model", "input", "temp", "user/default"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        settings = self.base / "user" / "default" / "comfy.settings.json"
        if not settings.exists():  # a returning user: no first-run tutorial or template dialog
            settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        config = {}
        for i, models in enumerate(self.models_dirs):
            # ComfyUI's folder names, each under the given models folder (extra_model_paths.yaml form).
            config[f"layerfusion_models_{i}"] = {
                "base_path": str(models),
                **{name: name for name in ("checkpoints", "vae", "loras", "layer_model", "clip", "unet", "diffusion_models")},
            }
        yaml_path = self.base / "extra_model_paths.yaml"
        yaml_path.write_text(json.dumps(config, indent=2) if config else "{}\n")  # JSON is valid YAML
        return yaml_path

    def command(self) -> list[str]:
        yaml_path = self._prepare()
        return [
            str(python()), str(self.host / "main.py"), "--cpu",
            "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-auto-launch",
            "--base-directory", str(self.base),
            "--output-directory", str(self.output_dir),
            "--extra-model-paths-config", str(yaml_path),
            "--database-url", "sqlite:///:memory:",
            *self.extra_args,
        ]

    def start(self) -> ComfyServer:
        return self.launch().wait_ready()

    def launch(self) -> ComfyServer:
        """Start the process and return at once; `wait_ready` waits until it answers. What the
        caller does in between (writing model files into its folders, say) overlaps ComfyUI's
        start-up: ComfyUI lists model folders when asked, not at start-up."""
        if pack_inside_host(self.host):
            log.info("the pack sits in %s/custom_nodes; it is linked again into the test base directory", self.host)
        cmd = self.command()
        log.info("starting ComfyUI: %s", " ".join(cmd))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                cmd, cwd=self.host, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self._launched = time.monotonic()
        return self

    def wait_ready(self) -> ComfyServer:
        """Wait for a launched server to answer; ServerError (the process stopped) when it exits,
        does not answer within the start-up timeout, or a custom node pack failed to import."""
        if self.process is None:
            raise ServerError("the server was not launched")
        deadline = self._launched + self.startup_timeout  # a server launched long ago is still asked once
        while True:
            if self.process.poll() is not None:
                raise ServerError(f"ComfyUI exited with code {self.process.returncode} during startup:\n{self.log_tail()}")
            try:
                self.get_json("/system_stats", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerError(f"ComfyUI did not answer within {self.startup_timeout:.0f}s:\n{self.log_tail()}") from None
                time.sleep(0.25)
        failures = self.import_failures()
        if failures:
            self.stop()
            raise ServerError("a custom node pack failed to import:\n" + "\n".join(failures) + "\n" + self.log_tail())
        return self

    def quick_test(self, timeout: float = 300) -> int:
        """Run ComfyUI's own ``--quick-test-for-ci`` (start, load every node, exit) into the log file.

        Returns its exit code; it is 0 even when a pack failed to import: read `import_failures()`.
        """
        with open(self.log_path, "wb") as log_file:
            done = subprocess.run(self.command() + ["--quick-test-for-ci"], cwd=self.host, stdout=log_file,
                                  stderr=subprocess.STDOUT, timeout=timeout)
        return done.returncode

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass

    def cleanup(self) -> None:
        self.stop()
        if self._own_base:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> ComfyServer:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()

    # ---- log -------------------------------------------------------------------------------
    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def import_failures(self) -> list[str]:
        ours = str(self.base / "custom_nodes")
        return [
            line for line in self.log_text().splitlines()
            if ours in line and any(marker in line for marker in IMPORT_FAILURE_MARKERS)
        ]

    # ---- HTTP ------------------------------------------------------------------------------
    def _request(self, path: str, data: dict | None = None, timeout: float = 30) -> bytes:
        body = None if data is None else json.dumps(data).encode()
        request = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()

    def get_json(self, path: str, timeout: float = 30) -> Any:
        return json.loads(self._request(path, timeout=timeout))

    def post_json(self, path: str, data: dict, timeout: float = 30) -> Any:
        try:
            raw = self._request(path, data, timeout=timeout)
        except urllib.error.HTTPError as err:
            raise ServerError(f"POST {path} answered {err.code}: {err.read().decode(errors='replace')}") from err
        return json.loads(raw) if raw else None

    def object_info(self) -> dict[str, Any]:
        return self.get_json("/object_info", timeout=60)

    # ---- prompts ---------------------------------------------------------------------------
    def queue(self, graph: dict[str, Any]) -> str:
        answer = self.post_json("/prompt", {"prompt": graph, "client_id": self.client_id})
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600) -> dict[str, Any]:
        """The history entry of a finished prompt; ServerError when it failed or timed out."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise ServerError(f"ComfyUI stopped while running prompt {prompt_id}:\n{self.log_tail()}")
            history = self.get_json(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status", {}).get("completed"):
                return entry
            if entry and entry.get("status", {}).get("status_str") == "error":
                raise ServerError(f"prompt {prompt_id} failed: {execution_error(entry)}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)  # a prompt refused or served from the cache ends in milliseconds
        raise ServerError(f"prompt {prompt_id} did not finish within {timeout:.0f}s:\n{self.log_tail()}")

    def run(self, graph: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
        """Queue an API-format graph, wait for it, return its outputs by node id."""
        return self.wait(self.queue(graph), timeout=timeout)["outputs"]

    def view(self, file_entry: dict[str, str]) -> bytes:
        """The bytes of an output file listed in a prompt's outputs (``filename``, ``subfolder``, ``type``)."""
        query = urllib.parse.urlencode({k: file_entry.get(k, "") for k in ("filename", "subfolder", "type")})
        return self._request(f"/view?{query}")
