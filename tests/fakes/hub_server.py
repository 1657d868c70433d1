"""A fake Hugging Face hub on 127.0.0.1 for the real ``huggingface_hub`` client (``HF_ENDPOINT``).

It answers what ``snapshot_download`` asks, in the hub's shapes: the revision's info
(``GET /api/models/{repo}/revision/{rev}``: ``sha``, ``siblings``), the file tree
(``GET /api/models/{repo}/tree/{sha}``), and each file (``HEAD``/``GET /{repo}/resolve/{sha}/{path}``: ``ETag``,
``X-Repo-Commit``, ``Content-Length``). An unknown repository is a 404 with ``X-Error-Code: RepoNotFound``,
which the client raises as ``RepositoryNotFoundError``. ``server.paths`` lists what was asked for.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from tests.fakes import FakeServer, JsonHandler


class FakeHubServer(FakeServer):
    def __init__(self, repos: dict[str, Path]) -> None:
        """``repos``: repository id -> a folder whose files (recursively) the repository holds."""
        super().__init__()
        self.repos = {
            repo: {
                str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            }
            for repo, folder in repos.items()
        }
        self.paths: list[str] = []

    def commit(self, repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()  # a 40-hex commit id, stable per repository


class _HubHandler(JsonHandler):
    fake: FakeHubServer

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def _answer(self, with_body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.fake.paths.append(f"{self.command} {path}")
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            repo, kind = "/".join(parts[2:4]), parts[4]
            files = self._repo(repo)
            if files is None:
                return
            commit = self.fake.commit(repo)
            if kind == "revision":
                info: Any = {"id": repo, "sha": commit, "siblings": [{"rfilename": name} for name in files]}
            elif kind == "tree":
                info = [
                    {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                    for name, data in files.items()
                ]
            else:
                self.send_json(404, {"error": "not found"})
                return
            self.send_json(200, info)
            return
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, name = "/".join(parts[:2]), "/".join(parts[4:])
            files = self._repo(repo)
            if files is None:
                return
            if name not in files:
                self.send_json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
                return
            data = files[name]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("X-Repo-Commit", self.fake.commit(repo))
            self.end_headers()
            if with_body:
                self.wfile.write(data)
            return
        self.send_json(404, {"error": "not found"})

    def send_json(self, status: int, payload: Any, headers: Any = None) -> None:
        if self.command != "HEAD":
            super().send_json(status, payload, headers)
            return
        self.send_response(status)  # a HEAD answer has headers only: a body would corrupt the next response
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _repo(self, repo: str) -> dict[str, bytes] | None:
        files = self.fake.repos.get(repo)
        if files is None:
            self.send_json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        return files


FakeHubServer.handler_class = _HubHandler
