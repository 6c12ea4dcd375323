"""HTTP for the MAAS simulator: parsing, APPEND_SLASH, authentication, faults, headers.

Bodies are read the way Django fills ``request.POST``: ``application/x-www-form-urlencoded``
and ``multipart/form-data`` are parsed, anything else (JSON included) is ignored. A path
without its trailing slash that would match with one gets Django's APPEND_SLASH answer, a
``301`` to the slashed URL (a client that follows it re-sends a POST as GET, losing the body,
which is why MAAS clients always send the slash). Every answer carries ``X-MAAS-API-Hash``.
"""

from __future__ import annotations

import email.parser
import email.policy
import logging
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from metalflow.lab.maas.api.base import ApiError, Params, Request, Response
from metalflow.lab.maas.api.routes import Api, match_route
from metalflow.lab.maas.oauth import CHALLENGE, AuthFailure, OAuthVerifier

log = logging.getLogger(__name__)

PREFIX = "/MAAS/api/2.0/"
MAX_BODY = 16 * 1024 * 1024


@dataclass
class Faults:
    """The lab's knobs on the API (guarded by ``lock``)."""

    mode: str = "none"  # "503" | "409" | "none"
    count: int = 0
    retry_after: int = 1
    delay: float = 0.0


def parse_body(content_type: str, body: bytes) -> Params:
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        return Params(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    if ctype == "multipart/form-data":
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        pairs = []
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name is None:
                continue
            payload = part.get_payload(decode=True)  # bytes (or None) for a non-multipart part
            pairs.append((str(name), payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""))
        return Params(pairs)
    return Params()


class MaasHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(
        self, address: tuple[str, int], api: Api, verifier: OAuthVerifier, faults: Faults, faults_lock: threading.Lock
    ):
        self.api = api
        self.verifier = verifier
        self.faults = faults
        self.faults_lock = faults_lock
        super().__init__(address, _Handler)

    def take_fault(self) -> Response | None:
        with self.faults_lock:
            f = self.faults
            if f.mode == "none" or f.count <= 0:
                return None
            f.count -= 1
            mode, retry = f.mode, f.retry_after
            if f.count == 0:
                f.mode = "none"
        if mode == "503":
            return Response.text(
                503, "Unable to connect to any rack controller: the region is busy.", **{"Retry-After": str(retry)}
            )
        html = (
            "<html><head><title>409 Conflict</title></head><body><h1>Conflict</h1>"
            "<p>The request could not be completed: a database conflict persisted after "
            "retrying. Try again.</p></body></html>"
        )
        return Response(409, html.encode(), "text/html; charset=utf-8", {"Retry-After": str(retry)})

    def handle_request_bytes(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        with self.faults_lock:
            delay = self.faults.delay
        if delay > 0:
            time.sleep(delay)  # the simulated latency itself, not a synchronisation
        split = urlsplit(target)
        path = split.path
        if not path.startswith(PREFIX):
            if path + "/" == PREFIX:
                return _redirect(headers.get("host", ""), PREFIX, split.query)
            return _not_found(path)
        rel = path[len(PREFIX) :]
        found = match_route(rel)
        if found is None:
            if not rel.endswith("/") and match_route(rel + "/") is not None:
                return _redirect(headers.get("host", ""), path + "/", split.query)
            return _not_found(path)
        route, args = found
        if not route.anon:
            try:
                self.verifier.verify(headers.get("authorization"))
            except AuthFailure as exc:
                extra = CHALLENGE if exc.status == 401 and exc.body != "Forbidden" else {}
                return Response.text(exc.status, exc.body, **extra)
            fault = self.take_fault()
            if fault is not None:
                return fault
        req = Request(
            method,
            rel,
            Params(parse_qsl(split.query, keep_blank_values=True)),
            parse_body(headers.get("content-type", ""), body) if method in ("POST", "PUT") else Params(),
        )
        try:
            return self.api.dispatch(route, req, args)
        except ApiError as exc:
            return exc.response()
        except Exception:
            log.exception("%s %s failed", method, path)
            return Response.text(500, "Internal server error (see the lab log).")


def _redirect(host: str, location: str, query: str) -> Response:
    """Django's APPEND_SLASH answer: a permanent redirect to the absolute, slashed URL."""
    target = (f"http://{host}" if host else "") + location + (f"?{query}" if query else "")
    return Response(301, b"", "text/html; charset=utf-8", {"Location": target})


def _not_found(path: str) -> Response:
    html = f"<h1>Not Found</h1><p>The requested resource was not found on this server: {path}</p>"
    return Response(404, html.encode(), "text/html; charset=utf-8")


class _Handler(BaseHTTPRequestHandler):
    server: MaasHttpServer
    protocol_version = "HTTP/1.1"
    server_version = "MAAS-lab"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without NODELAY, Nagle plus the client's
        # delayed ACK would add ~40 ms to every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if length > MAX_BODY:
            self._send(Response.text(413, "Request body too large."))
            self.close_connection = True
            return
        body = self.rfile.read(length) if length > 0 else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        resp = self.server.handle_request_bytes(self.command, self.path, headers, body)
        self._send(resp)

    def _send(self, resp: Response) -> None:
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        self.send_header("X-MAAS-API-Hash", self.server.api.api_hash)
        self.send_header("Vary", "Authorization,Cookie")
        for k, v in resp.headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and resp.body:
            self.wfile.write(resp.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def serve_forever_in_thread(server: MaasHttpServer, name: str) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True)
    t.start()
    return t
