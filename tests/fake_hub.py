"""A small Hugging Face Hub on loopback, for tests: the part of the hub's HTTP API that
`huggingface_hub` (`HfApi.model_info`, `snapshot_download`, `hf_hub_download`) calls, over real HTTP.

- ``GET  /api/models/{org}/{name}[/revision/{rev}]``: model info (``sha``, ``siblings``)
- ``GET  /api/models/{org}/{name}/tree/{rev}``: the file listing (``oid``, ``size``, ``lfs``)
- ``HEAD /{org}/{name}/resolve/{rev}/{file}``: ``X-Repo-Commit``, ``ETag``, ``Content-Length``
- ``GET  /{org}/{name}/resolve/{rev}/{file}``: the bytes (``Range: bytes=N-`` honoured)

Unknown repos, revisions and files answer 404 with the hub's ``X-Error-Code``; a private repo
answers 401 without its token. No xet headers: every file comes over plain HTTP. Each request is
recorded (method, path, Authorization header), so a test can say what was and was not fetched.
"""

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    token: str | None = None


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(
        self, repo: str, files: dict[str, bytes] | Path, branch: str = "main", token: str | None = None
    ) -> str:
        """A new commit of `repo` holding `files` (a dict or a folder's files), `branch` moved to it."""
        if isinstance(files, Path):
            files = {path.name: path.read_bytes() for path in sorted(files.iterdir()) if path.is_file()}
        entry = self.repos.setdefault(repo, Repo())
        digest = hashlib.sha1(f"{repo}:{len(entry.commits)}".encode())
        for name, data in sorted(files.items()):
            digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        commit = digest.hexdigest()
        entry.commits[commit], entry.refs[branch], entry.token = dict(files), commit, token
        return commit

    def fetched(self, repo: str) -> list[str]:
        """File names of `repo` requested through /resolve/ (HEAD or GET), in order."""
        prefix = f"/{repo}/resolve/"
        return [unquote(path.removeprefix(prefix).partition("/")[2]) for _, path, _ in self.requests
                if path.startswith(prefix)]  # fmt: skip

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args) -> None:
            pass

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
            self._serve(body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path = urlsplit(self.path).path
            hub.requests.append((self.command, path, self.headers.get("Authorization")))
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                self._api(f"{parts[2]}/{parts[3]}", parts[4:])
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._resolve(f"{parts[0]}/{parts[1]}", unquote(parts[3]), unquote("/".join(parts[4:])), body)
            else:
                self._error(404, "EntryNotFound", "no such endpoint")

        def _repo(self, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", f"{repo_id} not found")
                return None
            if repo.token and self.headers.get("Authorization") != f"Bearer {repo.token}":
                self._error(401, "RepoNotFound", "Invalid username or password.")
                return None
            commit = revision if revision in repo.commits else repo.refs.get(revision)
            if commit is None:
                self._error(404, "RevisionNotFound", f"{revision} not found")
                return None
            return commit, repo.commits[commit]

        def _api(self, repo_id: str, rest: list[str]) -> None:
            revision = unquote(rest[1]) if len(rest) >= 2 and rest[0] in ("revision", "tree") else "main"
            found = self._repo(repo_id, revision)
            if found is None:
                return
            commit, files = found
            if rest[:1] == ["tree"]:
                listing = [_tree_entry(name, data) for name, data in sorted(files.items())]
                self._json(listing)
            else:
                siblings = [{"rfilename": name} for name in sorted(files)]
                self._json({"id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                            "siblings": siblings})  # fmt: skip

        def _resolve(self, repo_id: str, revision: str, name: str, body: bool) -> None:
            found = self._repo(repo_id, revision)
            if found is None:
                return
            commit, files = found
            if name not in files:
                self._error(404, "EntryNotFound", f"{name} not found", commit)
                return
            data = files[name]
            start = int(self.headers.get("Range", "bytes=0-").removeprefix("bytes=").partition("-")[0] or 0)
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if body:
                self.wfile.write(data[start:])

        def _json(self, payload: object) -> None:
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
            data = json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

    return Handler


def _tree_entry(name: str, data: bytes) -> dict:
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    entry = {"type": "file", "oid": blob, "size": len(data), "path": name}
    if name.endswith(".safetensors"):
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return entry
