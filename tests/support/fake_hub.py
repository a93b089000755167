"""A stand-in for the Hugging Face Hub's file endpoint, on 127.0.0.1, for download tests.

It answers what `huggingface_hub.hf_hub_download` asks: `HEAD` and `GET`
`/<repo>/resolve/<revision>/<file>`, with the headers the client reads (`X-Repo-Commit`; `ETag`,
and for LFS files `X-Linked-Etag` = the sha256 and `X-Linked-Size`; `Content-Length`). What it
serves and what it claims are set separately, so a test can make it lie.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import socket
import threading
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclasses.dataclass
class Served:
    body: bytes
    etag: str  # what the Hub reports: the sha256 for LFS files, a 40-hex git blob id otherwise

    @property
    def lfs(self) -> bool:
        return len(self.etag) == 64


def served(body: bytes, claimed: bytes | None = None) -> Served:
    """``body``, reported as an LFS file whose sha256 is that of ``claimed`` (default: ``body``)."""
    return Served(body, hashlib.sha256(body if claimed is None else claimed).hexdigest())


class FakeHub:
    """Use as a context manager: `with FakeHub("org/repo", {"a.safetensors": served(b"...")}) as hub:`;
    `hub.endpoint` is its base URL, `hub.requests` the (method, path) pairs it answered."""

    def __init__(self, repo: str, files: dict[str, Served], commit: str = COMMIT) -> None:
        self.repo, self.files, self.commit = repo, files, commit
        self.requests: list[tuple[str, str]] = []
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        # shutdown() waits for serve_forever's next poll: 0.5 s by default, at every test's end
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def _answer(self, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        self.requests.append((method, path))
        prefix = f"/{self.repo}/resolve/"
        if not path.startswith(prefix):
            return 404, {"X-Error-Code": "RepoNotFound"}, b"repository not found"
        revision, _, name = unquote(path[len(prefix):]).partition("/")
        if revision not in (self.commit, "main"):
            return 404, {"X-Error-Code": "RevisionNotFound"}, b"revision not found"
        entry = self.files.get(name)
        if entry is None:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": self.commit}, b"entry not found"
        headers = {"X-Repo-Commit": self.commit, "ETag": f'"{entry.etag}"', "Content-Length": str(len(entry.body))}
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.etag}"', "X-Linked-Size": str(len(entry.body))})
        return 200, headers, entry.body

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _reply(self, with_body: bool) -> None:
                status, headers, body = hub._answer(self.command, self.path)
                self.send_response(status)
                headers.setdefault("Content-Length", str(len(body)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
                self._reply(with_body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._reply(with_body=True)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        return Handler


def closed_port_endpoint() -> str:
    """The URL of a port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
