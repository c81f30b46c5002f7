"""The server's HTTP protocol bounds a request's line and headers (httptools itself keeps
a header line however long it grows)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from jobbalancer import server


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _serve(chunks: list[bytes]) -> Transport:
    async def run() -> Transport:
        config = uvicorn.Config(_app, http=server.BoundedHttpTools, log_level="error")
        protocol = server.BoundedHttpTools(config, ServerState(), {})
        transport = Transport()
        protocol.connection_made(transport)
        for chunk in chunks:
            if transport.closed:
                break
            protocol.data_received(chunk)
        for _ in range(20):  # let the app's task answer
            await asyncio.sleep(0)
        return transport

    # In a thread of its own: a test before may leave a loop running on this one (the
    # browser tests' Playwright does), and asyncio.run() refuses to start inside it.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result(timeout=60)


def test_a_header_without_end_is_refused_with_431() -> None:
    start = b"GET /api/v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer jb_"
    endless = [start] + [b"a" * 16_384] * 1000  # 16 MiB if nothing stopped it

    transport = _serve(endless)

    assert transport.written.startswith(b"HTTP/1.1 431 ")
    assert transport.closed


def test_ordinary_and_long_heads_are_served_as_before() -> None:
    ids = ",".join(str(n) for n in range(1_000_000, 1_000_500))  # 500 ids: ~4 KiB
    request = f"GET /api/v1/jobs?id={ids}&retry_of={ids} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    body = b"x" * 300_000
    post = b"POST /addJob HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n" + body

    # In small pieces (a slow client) and whole; a big body is not a head.
    transport = _serve([request[i : i + 100] for i in range(0, len(request), 100)] + [post])

    assert transport.written.count(b"HTTP/1.1 200 OK") == 2
    assert not transport.closed
