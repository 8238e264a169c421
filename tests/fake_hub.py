"""A fake Hugging Face Hub, in-process on 127.0.0.1 (http.server in a thread), answering the calls
`echo-os models pull` makes through huggingface_hub (shapes read from huggingface_hub 2.4's HfApi and
file_download): GET /api/models/{repo}/revision/{rev} (model_info and repo_info: id, sha, siblings with
rfilename and size), GET /api/models/{repo}/tree/{rev} (one page of {type, path, size, oid}), HEAD and GET
/{repo}/resolve/{rev}/{path} (X-Repo-Commit, ETag, Content-Length; a GET honours `Range: bytes=N-` with a
206, as the Hub's CDN does, which is how huggingface_hub resumes a dropped download).

`truncate[path] = n`: the next n GETs of that file promise the rest of it (Content-Length) and close the
connection after half of what they promised, like a network drop mid-download. `gets[path]` counts GETs.
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
import socket
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos
        self.truncate: dict[str, int] = {}
        self.gets: collections.Counter[str] = collections.Counter()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _json(self, status: int, payload) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _file(self, send_body: bool) -> None:
                match = re.fullmatch(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)",
                                     self.path.split("?")[0])
                files = hub.repos.get(match["repo"]) if match else None
                if files is None or match["path"] not in files:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path, data = match["path"], files[match["path"]]
                start = 0
                ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                if send_body and ranged:
                    start = int(ranged[1])
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(body)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if not send_body:
                    return
                hub.gets[path] += 1
                if hub.truncate.get(path, 0) > 0:
                    hub.truncate[path] -= 1
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def do_HEAD(self):
                self._file(send_body=False)

            def do_GET(self):
                path = self.path.split("?")[0]
                info = re.fullmatch(r"/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?", path)
                tree = re.fullmatch(r"/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)", path)
                if info or tree:
                    repo = (info or tree)["repo"]
                    files = hub.repos.get(repo)
                    if files is None:
                        self.send_response(404)
                        self.send_header("X-Error-Code", "RepoNotFound")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    if tree:
                        return self._json(200, [{"type": "file", "path": name, "size": len(data),
                                                 "oid": hashlib.sha1(data).hexdigest()}
                                                for name, data in sorted(files.items())])
                    return self._json(200, {"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                                            "siblings": [{"rfilename": name, "size": len(data),
                                                          "blobId": hashlib.sha1(data).hexdigest()}
                                                         for name, data in sorted(files.items())]})
                self._file(send_body=True)

        return Handler


@contextmanager
def fake_hub(repos: dict[str, dict[str, bytes]]):
    hub = FakeHub(repos)
    hub.thread.start()
    try:
        yield hub
    finally:
        hub.httpd.shutdown()
        hub.httpd.server_close()
