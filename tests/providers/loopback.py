"""A local HTTP server for fakes of providers' APIs, with faults on demand.

The real SDKs (stripe, mercadopago) talk to it over 127.0.0.1 exactly as they would to the
provider: a standard-library ``ThreadingHTTPServer`` on port 0 in a daemon thread (DESIGN
§10: it serves both SDKs on asyncio and trio, and can do what an ASGI server cannot, drop a
connection or cut a body). A fake is a function from a ``Request`` to a ``Response``; the
server records every request it was sent, in order, and answers with the next queued
``Fault`` for the path instead, where there is one.

>>> import json, urllib.request
>>> def hello(request: Request) -> Response:
...     return Response(200, {"path": request.path, "hi": request.form.get("name")})
>>> with LoopbackAPI(hello) as api:
...     body = urllib.request.urlopen(api.url + "/v1/x", data=b"name=ann").read()
...     api.inject(Fault(status=500), path="/v1/x")
...     try:
...         urllib.request.urlopen(api.url + "/v1/x", data=b"")
...     except urllib.error.HTTPError as error:
...         status = error.code
>>> json.loads(body), status, [r.path for r in api.requests]
({'path': '/v1/x', 'hi': 'ann'}, 500, ['/v1/x', '/v1/x'])
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass(frozen=True)
class Request:
    """One request as the server received it. ``form`` is the body read as Stripe's
    form encoding (``a[b]=c`` keys kept as they came); ``json`` the body read as JSON."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        """A header by name, matched case-insensitively."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)

    @property
    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass(frozen=True)
class Response:
    status: int
    body: Any = None
    """JSON-encoded unless ``bytes``."""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Fault:
    """What to do instead of answering (one request each):

    - ``status`` (with ``body``, ``headers``): answer that;
    - ``delay``: seconds to wait first (a client timeout shorter than it fires);
    - ``drop``: close the connection without a response (after reading the request);
    - ``cut``: send the headers and only the start of the body, then close.
    - ``after_work``: run the fake first (the change is made), then do the fault: a
      response lost after the provider did the work.
    """

    status: int | None = None
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    cut: bool = False
    after_work: bool = False


class LoopbackAPI:
    """Serve ``app`` on ``http://127.0.0.1:<port>`` until ``stop`` (or the ``with`` ends).

    ``nodelay`` (the default) sets ``TCP_NODELAY`` on each connection: the handler writes a
    response's headers and body in two sends, and on a kept-alive connection Nagle's
    algorithm would hold the body until the client's delayed ACK (about 40 ms on Linux, on
    every call of a test or a benchmark).
    """

    def __init__(self, app: Callable[[Request], Response], *, nodelay: bool = True) -> None:
        self._app = app
        self.nodelay = nodelay
        self._lock = threading.Lock()
        self._faults: deque[tuple[str | None, Fault]] = deque()
        self.requests: list[Request] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> LoopbackAPI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LoopbackAPI:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def inject(self, fault: Fault, *, path: str | None = None, times: int = 1) -> None:
        """Queue ``fault`` for the next ``times`` requests (to ``path`` only, if given: its
        start, so ``/v1/payment_intents`` also matches ``/v1/payment_intents/pi_1``)."""
        with self._lock:
            self._faults.extend([(path, fault)] * times)

    def sent(self, method: str | None = None, path: str | None = None) -> list[Request]:
        """The requests received, in order, by method and path start."""
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method)
                and (path is None or r.path.startswith(path))
            ]

    def _next_fault(self, path: str) -> Fault | None:
        with self._lock:
            for index, (wanted, fault) in enumerate(self._faults):
                if wanted is None or path.startswith(wanted):
                    del self._faults[index]
                    return fault
        return None

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _answer(self, request: Request) -> Response:
        try:
            return self._app(request)
        except Exception as error:  # a bug in a fake: say so, as a 500 the test will see
            return Response(500, {"error": {"message": f"fake failed: {error!r}"}})


def _handler(api: LoopbackAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = api.nodelay

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the tests read ``api.requests``

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            request = Request(
                method=self.command,
                path=parts.path,
                query=dict(parse_qsl(parts.query, keep_blank_values=True)),
                headers=dict(self.headers.items()),
                body=body,
            )
            api._record(request)
            fault = api._next_fault(request.path)
            if fault is not None and fault.delay:
                time.sleep(fault.delay)
            if fault is None:
                self._send(api._answer(request), cut=False)
                return
            does_work = fault.after_work or (fault.status is None and not fault.drop)
            response = api._answer(request) if does_work else None
            if fault.drop:
                self._drop()
                return
            if fault.status is not None:
                response = Response(fault.status, fault.body, fault.headers)
            assert response is not None
            self._send(response, cut=fault.cut)

        def _drop(self) -> None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

        def _send(self, response: Response, *, cut: bool) -> None:
            payload = (
                response.body
                if isinstance(response.body, bytes)
                else json.dumps(response.body).encode()
            )
            self.send_response(response.status)
            headers = {"Content-Type": "application/json", **response.headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if cut:
                self.wfile.write(payload[: max(1, len(payload) // 2)])
                self.wfile.flush()
                self._drop()
                return
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = do_PUT = _serve

    return Handler
