"""Real receivers of notifications on 127.0.0.1, for the tests: a webhook that checks the
signature and records what it got, one that fails its first answers, one that never
answers, and an SMTP server (aiosmtpd)."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class Delivery:
    body: dict[str, Any]
    headers: dict[str, str]
    signature_ok: bool


@dataclass
class Webhook:
    """An HTTP receiver: answers the first ``fail_first`` posts with 500, then 200. With
    ``hang_first`` it holds the first post without answering (its key in ``hung``) until
    ``release`` is set or 30 s pass."""

    secret: str = ""
    fail_first: int = 0
    hang_first: bool = False
    hung: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    got: list[Delivery] = field(default_factory=list)
    posts: int = 0
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self, count: int, timeout: float = 10.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.got) >= count:
                    return list(self.got)
            time.sleep(0.02)
        with self.lock:
            return list(self.got)

    def keys(self) -> list[str]:
        with self.lock:
            return [d.headers["idempotency-key"] for d in self.got]


@contextmanager
def webhook(secret: str = "", fail_first: int = 0, hang_first: bool = False) -> Iterator[Webhook]:
    hook = Webhook(secret=secret, fail_first=fail_first, hang_first=hang_first)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            expected = "sha256=" + hmac.new(hook.secret.encode(), body, hashlib.sha256).hexdigest()
            sent = self.headers.get("X-Jobbalancer-Signature", "")
            if hook.hang_first:
                with hook.lock:
                    first = not hook.hung
                    if first:
                        hook.hung.append(self.headers.get("Idempotency-Key", ""))
                if first:
                    hook.release.wait(30)
                    self.close_connection = True
                    return
            with hook.lock:
                hook.posts += 1
                failing = hook.posts <= hook.fail_first
                if not failing:
                    hook.got.append(
                        Delivery(
                            body=json.loads(body),
                            headers={k.lower(): v for k, v in self.headers.items()},
                            signature_ok=hmac.compare_digest(expected, sent),
                        )
                    )
            self.send_response(500 if failing else 200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"no" if failing else b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        hook.release.set()
        server.shutdown()
        server.server_close()


@contextmanager
def silent_server() -> Iterator[str]:
    """A URL whose server accepts connections and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/never"
    finally:
        stop.set()
        thread.join(timeout=2)
        for conn in held:
            conn.close()
        sock.close()


@dataclass
class Mailbox:
    port: int
    messages: list[Message] = field(default_factory=list)

    def wait(self, count: int, timeout: float = 10.0) -> list[Message]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.messages) < count:
            time.sleep(0.02)
        return list(self.messages)


class _Handler:
    def __init__(self, box: Mailbox) -> None:
        self.box = box

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content)
        message["X-Rcpt"] = ", ".join(envelope.rcpt_tos)
        self.box.messages.append(message)
        return "250 OK"


@contextmanager
def smtp_server() -> Iterator[Mailbox]:
    """A real SMTP server (no TLS, no login) on 127.0.0.1."""
    box = Mailbox(port=free_port())
    controller = Controller(_Handler(box), hostname="127.0.0.1", port=box.port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
