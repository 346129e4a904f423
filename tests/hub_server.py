"""A local Hugging Face Hub for huggingface_hub's real download code (HF_ENDPOINT=server.url).

It serves a directory we own, laid out as

    root/<org>/<name>/<commit sha (40 hex)>/<files>     one directory per commit
    root/<org>/<name>/refs/<branch or tag>              the commit sha a revision name points at

under the routes huggingface_hub calls (huggingface_hub 0.30 - 2.x):

    GET  /api/models/<org>/<name>/revision/<rev>        repo info: {"id", "sha", "siblings"}
    GET  /api/models/<org>/<name>/tree/<sha>[?recursive] the files: [{"type", "path", "size", "oid", "lfs"}]
    HEAD /<org>/<name>/resolve/<rev>/<file>             X-Repo-Commit, ETag (git blob sha1) or for weights
    GET  /<org>/<name>/resolve/<rev>/<file>               X-Linked-Etag (sha256) + X-Linked-Size, as the Hub
                                                        sends them for LFS files; then the bytes

with the Hub's error codes (X-Error-Code: RepoNotFound, RevisionNotFound, EntryNotFound). The
server binds port 0 (the OS picks a free port) on 127.0.0.1 and runs in a thread of the test
process; `stop()` shuts it down. `server.log` lists every request; `server.cut_after` makes
the next GETs of a file send only that many bytes of it and then drop the connection, and
`server.throttle_s` sleeps between 64 KiB chunks (a slow download to kill mid-way).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import pathlib
import re
import threading
import time
import urllib.parse

LFS_SUFFIXES = (".safetensors", ".bin", ".h5", ".msgpack")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n"
            f"size {len(data)}\n").encode()


class HubServer:
    def __init__(self, root: pathlib.Path):
        self.root = pathlib.Path(root)
        self.log: list[str] = []
        self.cut_after: dict[str, int] = {}  # file name -> bytes sent before the connection drops
        self.throttle_s = 0.0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                server._handle(self, body=False)

            def do_GET(self):
                server._handle(self, body=True)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> "HubServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)

    # ---- the repository directory
    def _commit(self, repo: str, revision: str) -> str | None:
        base = self.root / repo
        if re.fullmatch(r"[0-9a-f]{40}", revision) and (base / revision).is_dir():
            return revision
        ref = base / "refs" / revision
        return ref.read_text().strip() if ref.is_file() else None

    @staticmethod
    def _entry(path: pathlib.Path, name: str) -> dict:
        data = path.read_bytes()
        if name.endswith(LFS_SUFFIXES):
            pointer = lfs_pointer(data)
            return {"type": "file", "path": name, "size": len(data), "oid": git_blob_sha1(pointer),
                    "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": len(pointer)}}
        return {"type": "file", "path": name, "size": len(data), "oid": git_blob_sha1(data)}

    # ---- requests
    def _send(self, handler, status: int, headers: dict, body: bytes = b"", send_body: bool = True,
              cut: int | None = None) -> None:
        handler.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            handler.send_header(key, value)
        handler.end_headers()
        if not send_body:
            return
        sent = 0
        end = len(body) if cut is None else cut
        while sent < end:
            chunk = body[sent:min(end, sent + 65536)]
            handler.wfile.write(chunk)
            handler.wfile.flush()
            sent += len(chunk)
            if self.throttle_s:
                time.sleep(self.throttle_s)
        if cut is not None:  # a dropped connection: fewer bytes than Content-Length said
            handler.close_connection = True
            handler.connection.shutdown(2)

    def _error(self, handler, status: int, code: str, message: str, send_body: bool) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(handler, status, {"X-Error-Code": code, "X-Error-Message": message,
                                     "Content-Type": "application/json"}, body, send_body)

    def _handle(self, handler, body: bool) -> None:
        parsed = urllib.parse.urlsplit(handler.path)
        path = urllib.parse.unquote(parsed.path)
        self.log.append(f"{handler.command} {handler.path}")
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)(/.*)?", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        match = api or resolve
        if not match:
            return self._error(handler, 404, "EntryNotFound", f"no route {path}", body)
        repo = match.group(1)
        if not (self.root / repo).is_dir():
            return self._error(handler, 404, "RepoNotFound", f"Repository {repo} not found", body)
        revision = match.group(3) if api else match.group(2)
        commit = self._commit(repo, revision)
        if commit is None:
            return self._error(handler, 404, "RevisionNotFound", f"Invalid rev id: {revision}", body)
        snapshot = self.root / repo / commit
        files = sorted(p for p in snapshot.rglob("*") if p.is_file())
        if api and api.group(2) == "revision":
            info = {"id": repo, "modelId": repo, "sha": commit, "private": False,
                    "siblings": [{"rfilename": str(p.relative_to(snapshot))} for p in files]}
            return self._send(handler, 200, {"Content-Type": "application/json"}, json.dumps(info).encode(), body)
        if api:
            entries = [self._entry(p, str(p.relative_to(snapshot))) for p in files]
            return self._send(handler, 200, {"Content-Type": "application/json"}, json.dumps(entries).encode(), body)
        name = resolve.group(3)
        file = snapshot / name
        if not file.is_file():
            return self._error(handler, 404, "EntryNotFound", f"{name} does not exist at revision {revision}", body)
        data = file.read_bytes()
        entry = self._entry(file, name)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{entry["oid"]}"', "Accept-Ranges": "none",
                   "Content-Type": "application/octet-stream"}
        if "lfs" in entry:
            headers.update({"X-Linked-Etag": f'"{entry["lfs"]["oid"]}"', "X-Linked-Size": str(len(data))})
        cut = self.cut_after.get(name) if body else None
        self._send(handler, 200, headers, data, body, cut=cut)
