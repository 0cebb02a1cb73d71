"""A fake Hugging Face hub for tests: dataset files over the hub's resolve protocol, with failures on demand.

    with FakeHub({"owner/name": {"a.parquet": b"..."}}) as hub:
        hub.cut("a.parquet", at=100)     # the next GET sends 100 bytes of its body, then drops the connection
        hub.corrupt("a.parquet")         # the next GET sends wrong bytes (the ETag still names the true sha256)
        hub.fail("a.parquet", times=2)   # the next 2 requests (HEAD or GET) of the file get a 500
        main([..., "--endpoint", hub.url])
        hub.requests                     # [Request(method, repo, revision, filename, range), ...]

HEAD and GET /datasets/<owner>/<name>/resolve/<revision>/<filename> answer with X-Repo-Commit, a quoted
sha256 ETag, Content-Length and Accept-Ranges; a GET with `Range: bytes=N-` gets a 206 with the rest of the
file. Unknown repos, revisions and files get a 404 with the hub's X-Error-Code, so huggingface_hub raises
the same errors as against the real hub.
"""

import hashlib
import re
import threading
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
RESOLVE = re.compile(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)")
RANGE = re.compile(r"bytes=(\d+)-")

Request = namedtuple("Request", "method repo revision filename range")


class FakeHub:
    def __init__(self, repos, on_request=None):
        self.repos = repos            # {repo_id: {filename: bytes}}; tests may change it between runs
        self.on_request = on_request  # called with each Request before it is answered
        self.requests = []
        self._faults = {}             # (kind, filename) -> {"skip", "times", "at"}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.hub = self
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self):
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        return self

    def __exit__(self, *exc_info):
        self._server.shutdown()
        self._server.server_close()

    # Failure injection: each applies to the next `times` matching requests of the file
    def cut(self, filename, at, times=1):
        """GETs send full headers but only `at` bytes of the body, then close the connection."""
        self._faults["cut", filename] = {"skip": 0, "times": times, "at": at}

    def corrupt(self, filename, times=1):
        """GETs send a body of the right length with every byte flipped."""
        self._faults["corrupt", filename] = {"skip": 0, "times": times}

    def fail(self, filename, times=1, after=0):
        """After `after` good requests (HEAD or GET), requests get a 500."""
        self._faults["fail", filename] = {"skip": after, "times": times}

    def _take(self, kind, filename):
        """The fault for this request, if any (and one fewer to go)."""
        with self._lock:
            fault = self._faults.get((kind, filename))
            if fault is None or fault["times"] == 0:
                return None
            if fault["skip"]:
                fault["skip"] -= 1
                return None
            fault["times"] -= 1
            return fault

    def gets(self, filename=None):
        """The GET requests, of one file or all."""
        return [r for r in self.requests if r.method == "GET" and filename in (None, r.filename)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def do_HEAD(self):
        self._resolve()

    def do_GET(self):
        self._resolve()

    def _resolve(self):
        hub = self.server.hub
        match = RESOLVE.fullmatch(unquote(urlsplit(self.path).path))
        repo, revision, filename = match.groups() if match else (None, None, None)
        request = Request(self.command, repo, revision, filename, self.headers.get("Range"))
        with hub._lock:
            hub.requests.append(request)
        if hub.on_request:
            hub.on_request(request)
        if repo not in hub.repos:
            return self._error(404, "RepoNotFound")
        if revision not in ("main", COMMIT):
            return self._error(404, "RevisionNotFound")
        if filename not in hub.repos[repo]:
            return self._error(404, "EntryNotFound")
        if hub._take("fail", filename):
            return self._error(500, None)
        data = hub.repos[repo][filename]
        start = int(RANGE.fullmatch(request.range).group(1)) if request.range and self.command == "GET" else 0
        if start > len(data):
            return self._error(416, None, {"Content-Range": f"bytes */{len(data)}"})
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if hub._take("corrupt", filename):
            body = bytes(b ^ 0xFF for b in body)
        if cut := hub._take("cut", filename):
            body = body[:cut["at"]]
            self.close_connection = True  # fewer bytes than Content-Length, then EOF: a dropped transfer
        self.wfile.write(body)

    def _error(self, status, error_code, headers=None):
        body = f"{status} {error_code or 'error'}".encode()
        self.send_response(status)
        self.send_header("X-Repo-Commit", COMMIT)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if error_code:
            self.send_header("X-Error-Code", error_code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
