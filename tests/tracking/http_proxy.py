"""A real HTTP proxy in front of a real `mlflow server`, for what a network does to clients:
it can demand a password (a server behind basic auth) and lose the answer to a request
after the server has done the work (a response dropped on the way back).

Imported by tests; it holds no tests itself.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import threading
import urllib.parse

from tests.helpers import free_port

_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


class HttpProxy:
    """127.0.0.1:port -> `target` (a base URL). `auth` = (user, password) answers 401 to any
    request without them; `drop` = path fragments whose next response (one per listed
    fragment, once) is thrown away after the server answered: the client sees the connection
    close with no reply. `log` records (method, path, authorized, dropped) per request."""

    def __init__(self, target: str, *, auth: tuple[str, str] | None = None,
                 drop: tuple[str, ...] = ()) -> None:
        parts = urllib.parse.urlsplit(target)
        self.upstream = (parts.hostname, parts.port)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.expected = (
            "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode() if auth else None
        )
        self.to_drop = list(drop)
        self.log: list[tuple[str, str, bool, bool]] = []
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None

    def __enter__(self) -> HttpProxy:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _forward(self) -> None:
                proxy._handle(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def dropped(self, fragment: str) -> int:
        return sum(1 for _, path, _, dropped in self.log if dropped and fragment in path)

    def requests(self, fragment: str, method: str = "POST") -> int:
        return sum(1 for m, path, _, _ in self.log if m == method and fragment in path)

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        authorized = self.expected is None or h.headers.get("Authorization") == self.expected
        if not authorized:
            with self._lock:
                self.log.append((h.command, h.path, False, False))
            _reply(h, 401, {}, json.dumps({"error_code": "UNAUTHENTICATED",
                                           "message": "password required"}).encode())
            return
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP_HEADERS}
            conn.request(h.command, h.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        with self._lock:
            fragment = next((f for f in self.to_drop if f in h.path), None)
            if fragment is not None:
                self.to_drop.remove(fragment)
            self.log.append((h.command, h.path, True, fragment is not None))
        if fragment is not None:
            h.close_connection = True  # the server did the work; its answer never arrives
            return
        headers = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_HEADERS}
        _reply(h, response.status, headers, data)


def _reply(h: http.server.BaseHTTPRequestHandler, status: int, headers: dict[str, str],
           data: bytes) -> None:
    h.send_response(status)
    for key, value in headers.items():
        h.send_header(key, value)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)
