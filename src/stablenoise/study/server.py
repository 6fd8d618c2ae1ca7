"""The study app and the demo view: stdlib HTTP servers (no dependency) with a plain HTML/JS page each.

Nothing in a URL is a path: images are served by pair id and side, so only the files a study's pairs name
can be read, and each is resolved again (symlinks too) and served only if it lies inside the run folder.
Request bodies are JSON of at most ``MAX_BODY`` bytes; anything else is a 4xx with a JSON error.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from ..bench.report import inside_run
from ..errors import StablenoiseError
from .store import Study, VoteRefused, check_rater

MAX_BODY = 4096
STATIC = {"study.html": "text/html", "demo.html": "text/html", "app.css": "text/css", "study.js": "text/javascript",
          "demo.js": "text/javascript", "api.js": "text/javascript"}


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def static_file(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


class Handler(BaseHTTPRequestHandler):
    """Routes ``GET``/``POST`` to ``self.routes``: {(method, pattern): handler(match, query, body) -> reply}.
    A reply is a dict (JSON), or (bytes, content type)."""
    routes: dict = {}
    server_version = "stablenoise"
    sys_version = ""

    def log_message(self, format, *args):  # quiet: a study's progress is in its store, not on the console
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def _body(self) -> dict:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise HttpError(411, "a body needs a Content-Length") from None
        if length > MAX_BODY:
            raise HttpError(413, f"body over {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except (ValueError, UnicodeDecodeError):
            raise HttpError(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise HttpError(400, "the body must be a JSON object")
        return body

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        try:
            for (m, pattern), handler in self.routes.items():
                match = re.fullmatch(pattern, url.path)
                if match and m == method:
                    body = self._body() if method == "POST" else {}
                    reply = handler(self.server, match, parse_qs(url.query), body)
                    break
            else:
                known = any(re.fullmatch(p, url.path) for _, p in self.routes)
                raise HttpError(405, "method not allowed") if known else HttpError(404, "not found")
        except (HttpError, VoteRefused) as e:
            return self._send(e.status, json.dumps({"error": str(e)}).encode(), "application/json")
        except StablenoiseError as e:
            return self._send(400, json.dumps({"error": str(e)}).encode(), "application/json")
        except sqlite3.OperationalError as e:  # locked past the timeout, disk full: the rater may retry
            return self._send(503, json.dumps({"error": f"the study store is busy ({e})"}).encode(),
                              "application/json")
        if isinstance(reply, dict):
            self._send(200, json.dumps(reply).encode(), "application/json")
        else:
            self._send(200, *reply)

    def _send(self, status: int, data: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype + ("; charset=utf-8" if ctype.startswith("text/") else ""))
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(data)


def static_page(name: str):
    """A route handler that serves the packaged static file ``name`` with its content type."""
    return lambda server, match, query, body: (static_file(name), STATIC[name])




# ----------------------------------------------------------------------------- the study app

def _next(server, match, query, body) -> dict:
    rater = check_rater((query.get("rater") or [None])[0])
    pair_id, done, total = server.study.progress(rater)
    if pair_id is None:
        return {"done": True, "judged": done, "total": total}
    p = server.study.pairs[pair_id]
    return {"done": False, "judged": done, "total": total, "pair": pair_id, "prompt": p.prompt,
            "left": f"/image/{pair_id}/left", "right": f"/image/{pair_id}/right"}


def _vote(server, match, query, body) -> dict:
    pair = server.study.vote(body.get("pair"), body.get("rater"), body.get("choice"))
    return {"ok": True, "left": pair.side("left")[0], "right": pair.side("right")[0]}


def _image(server, match, query, body):
    pair = server.study.pairs.get(int(match[1]))
    if pair is None:
        raise HttpError(404, "no such pair")
    path = inside_run(server.study.run_dir, pair.side(match[2])[1])
    if path is None or not path.is_file():
        raise HttpError(404, "no such image in the run folder")
    return path.read_bytes(), "image/png"


def _results(server, match, query, body) -> dict:
    from ..records import strict_json
    from .results import analyze

    return strict_json(analyze(server.study, n_boot=server.n_boot))


STUDY_ROUTES = {("GET", "/"): static_page("study.html"), ("GET", "/results"): static_page("study.html"),
                **{("GET", f"/static/{re.escape(n)}"): static_page(n) for n in STATIC},
                ("GET", "/api/next"): _next, ("POST", "/api/vote"): _vote, ("GET", "/api/results"): _results,
                ("GET", r"/image/(\d{1,9})/(left|right)"): _image}


def make_server(handler_routes: dict, host: str, port: int, **state) -> ThreadingHTTPServer:
    handler = type("RoutedHandler", (Handler,), {"routes": handler_routes})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        raise StablenoiseError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    server.daemon_threads = True
    for k, v in state.items():
        setattr(server, k, v)
    return server


def study_server(study: Study, host: str = "127.0.0.1", port: int = 0, n_boot: int = 1000) -> ThreadingHTTPServer:
    return make_server(STUDY_ROUTES, host, port, study=study, n_boot=n_boot)


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def url(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"

