"""uvicorn's request/response cycle, writing an answer with a known length in one `transport.write`.

uvicorn writes a response's head when the app sends `http.response.start`, and each body message as it
comes: two writes, so two system calls, for every JSON answer, though its body always follows its head at
once. ASGI lets a server hold the head until the first body message (the specification long required
it; uvicorn is the server that does not), so this cycle holds the head of a response that has a
`content-length` and writes it with the first body message: one `writelines`, a single `writev` under
uvloop. A stream (chunked) still has its head written at once: a client sees its status as soon as the
proxy knows it, whatever the wait for the first token.

Everything else a client can see is uvicorn's: the same status line and header bytes (the same checks
of header names and values, done in one pass over all of them), `connection: close` and keep-alive,
HEAD, the response's length checked against its `content-length`, flow control, `100 Continue`. When the
app fails after starting a response, the held head is written before the connection is closed, as
uvicorn would have written it.

`send`, `run_asgi` and the head-writing part are adapted from uvicorn 0.55.0
(`uvicorn/protocols/http/httptools_impl.py`, `RequestResponseCycle`); `UVICORN_SOURCES` records the
fingerprints of the uvicorn code they follow, and a test fails when the installed uvicorn's differs.
"""

from __future__ import annotations

from collections.abc import Iterable

from uvicorn._types import ASGI3Application, ASGISendEvent
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

#: sha256 of `inspect.getsource` of the uvicorn code this module and `proxy.http.protocol` follow, as in
#: uvicorn 0.55.0; tests/unit/test_edge_cycle.py compares them with the installed uvicorn's.
UVICORN_SOURCES = {
    "RequestResponseCycle.__init__": "4d2f220910c33c12f2891cbf2fb89ad364464e1a189e7492e8dc43167563057a",
    "RequestResponseCycle.send": "abdd8601b326a8da972436918d3a954e1ef39c6bf0cd9e1c1954c2e798d0bb9c",
    "RequestResponseCycle.run_asgi": "0f33f2449a444bc210e26187fae751e687466157b0050706212bd6ea2b6a5f35",
    "HttpToolsProtocol.on_headers_complete": "1ea8589acfad92d8ff9182775f337d98fc469e0fa39642a83195fca920f5ca96",
    # The keep-alive timer (`ProxyHttpProtocol.on_response_complete`), and the methods that call the hook
    # `ProxyHttpProtocol._unset_keepalive_if_required` overrides.
    "HttpToolsProtocol.on_response_complete": "64e254f28e389e7614f2c828176d639174e66aa9d814a4b06624ec86ec0a5b95",
    "HttpToolsProtocol._unset_keepalive_if_required": "00a6a4e47214e68edef469a2a8f21ade722e9c6dfb2eb6c25855fbd9941cec32",
    "HttpToolsProtocol.data_received": "010a7ae59a5d3b1a5e7326ce246878568629d126a076d8af5ba10cab040fae43",
    "HttpToolsProtocol.connection_lost": "c91a4c9bf2e29c554a97418b5f3064e97f6e0ceaba3b90fc35a3460076c705ab",
    "HttpToolsProtocol.timeout_keep_alive_handler": "8b53bf5f2e202970f6f6c0338a5c381c66efce4e9c673b05175d858eef5fd888",
}


class ResponseCycle(RequestResponseCycle):
    """One request and its response on a connection; `_held` is the head of a response with a length,
    until its first body message."""

    _held: bytes | None = None

    async def run_asgi(self, app: ASGI3Application) -> None:
        """uvicorn's, with a held head written before the connection is closed mid-response."""
        try:
            result = await app(  # type: ignore[func-returns-value]
                self.scope, self.receive, self.send
            )
        except BaseException as exc:
            self.logger.error("Exception in ASGI application\n", exc_info=exc)
            if not self.response_started:
                await self.send_500_response()
            else:
                self._abort()
        else:
            if result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
                self._abort()
            elif not self.response_started and not self.disconnected:
                self.logger.error("ASGI callable returned without starting response.")
                await self.send_500_response()
            elif not self.response_complete and not self.disconnected:
                self.logger.error("ASGI callable returned without completing response.")
                self._abort()
        finally:
            self.on_response = lambda: None

    def _abort(self) -> None:
        """Close the connection mid-response, after what uvicorn would have written by now."""
        held, self._held = self._held, None
        if held is not None and not self.disconnected:
            self.transport.write(held)
        self.transport.close()

    async def send(self, message: ASGISendEvent) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()  # pragma: full coverage

        if self.disconnected:
            return  # pragma: full coverage

        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.start', but got '{message['type']}'."
                )
            self.response_started = True
            self.waiting_for_100_continue = False
            status_code = message["status"]
            if self.access_log:
                self.access_logger.info(
                    '%s - "%s %s HTTP/%s" %d',
                    get_client_addr(self.scope),
                    self.scope["method"],
                    get_path_with_query_string(self.scope),
                    self.scope["http_version"],
                    status_code,
                )
            head = self._head(status_code, message.get("headers", ()))
            if self.chunked_encoding is False:
                self._held = head  # written with the first body message
            else:
                self.transport.write(head)

        elif not self.response_complete:
            if message["type"] != "http.response.body":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.body', but got '{message['type']}'."
                )
            body = message.get("body", b"")
            more_body = message.get("more_body", False)

            if self.scope["method"] == "HEAD":
                self.expected_content_length = 0
                self._write_held(b"")
            elif self.chunked_encoding:
                content = [b"%x\r\n" % len(body), body, b"\r\n"] if body else []
                if not more_body:
                    content.append(b"0\r\n\r\n")
                self.transport.write(b"".join(content))
            else:
                num_bytes = len(body)
                if num_bytes > self.expected_content_length:
                    raise RuntimeError("Response content longer than Content-Length")
                self.expected_content_length -= num_bytes
                self._write_held(body)

            if not more_body:
                if self.expected_content_length != 0:
                    raise RuntimeError("Response content shorter than Content-Length")
                self.response_complete = True
                self.message_event.set()
                if not self.keep_alive:
                    self.transport.close()
                self.on_response()

        else:
            raise RuntimeError(
                f"Unexpected ASGI message '{message['type']}' sent, after response already completed."
            )

    def _write_held(self, body: bytes) -> None:
        """`body`, after the held head if there is one: one write either way (head and body in one
        `writelines`: one `writev` under uvloop, and the body is not copied)."""
        held, self._held = self._held, None
        if held is None:
            if body:
                self.transport.write(body)
        elif body:
            self.transport.writelines((held, body))
        else:
            self.transport.write(held)

    def _head(self, status_code: int, message_headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        """The status line and headers as uvicorn writes them; sets the response's framing
        (`chunked_encoding`, `expected_content_length`) and `keep_alive` as uvicorn does.

        uvicorn's checks of every header name and value, in one regex search over all names and one over
        all values: each pattern matches one refused byte, so a search of the concatenation finds one
        exactly when a search of some part would. (One match of the whole head instead is not the same:
        a value holding CRLF, or a name holding ": ", can make the head look like valid header lines.)"""
        headers = [*self.default_headers, *message_headers]
        content = [STATUS_LINE[status_code]]
        has_connection_close = False
        for name, value in headers:
            name = name.lower()
            if name == b"content-length" and self.chunked_encoding is None:
                try:
                    self.expected_content_length = int(value.decode())
                except ValueError:
                    _raise_as_uvicorn(headers)  # an invalid header before it is uvicorn's error
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection":
                connection = [token.lower().strip() for token in value.split(b",")]
                if b"close" in connection:
                    self.keep_alive = False
                    has_connection_close = True
            content += (name, b": ", value, b"\r\n")

        if not self.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        if self.chunked_encoding is None and self.scope["method"] != "HEAD" and status_code not in (204, 304):
            self.chunked_encoding = True  # neither content-length nor transfer-encoding
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        if HEADER_RE.search(b"".join([name for name, _ in headers])) or HEADER_VALUE_RE.search(
            b"".join([value for _, value in headers])
        ):
            _raise_as_uvicorn(headers)
        return b"".join(content)


def _raise_as_uvicorn(headers: list[tuple[bytes, bytes]]) -> None:
    """The error uvicorn's header loop raises for `headers`: the first invalid name or value, or a
    malformed `content-length` before it."""
    framed = False
    for name, value in headers:
        if HEADER_RE.search(name):
            raise RuntimeError("Invalid HTTP header name.")
        if HEADER_VALUE_RE.search(value):
            raise RuntimeError("Invalid HTTP header value.")
        name = name.lower()
        if name == b"content-length" and not framed:
            int(value.decode())
            framed = True
        elif name == b"transfer-encoding" and value.lower() == b"chunked":
            framed = True
    raise AssertionError("unreachable: a header failed the check")  # pragma: no cover
