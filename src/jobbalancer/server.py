"""Run the HTTP server: the API app under uvicorn, with TLS when configured."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from jobbalancer import errors, procsec, vault
from jobbalancer.settings import Settings

log = logging.getLogger(__name__)

# Open live log streams would hold a graceful shutdown forever; past this they are cut.
GRACEFUL_SHUTDOWN_SECONDS = 10

# A request's line and headers together (a URL with 500 ids in two filters is ~12 KiB).
MAX_HEAD_BYTES = 64 * 1024


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on a request's head: httptools keeps a
    header line however long it grows (h11 refused one past 16 KiB), so one connection
    sending a header without end held hundreds of MiB before any of our code ran. Past
    MAX_HEAD_BYTES the answer is 431 and the connection is closed."""

    _in_head = False
    _head_bytes = 0
    _heads_ended = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads_ended += 1
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        ended = self._heads_ended
        super().data_received(data)
        # Bytes of a head still incomplete (a chunk that also ended a head is let go: it
        # may hold a body and a pipelined request's start, and is at most one read).
        if not (self._in_head and ended == self._heads_ended) or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            message = b"request line and headers too large"
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(message), message)
            )
            self.transport.close()


def run_server(settings: Settings, *, access_log: bool = False) -> None:
    """Serve the API until SIGTERM or SIGINT, then shut down gracefully and return.

    Binds ``server.host``:``server.port`` first, so a taken port is a clear
    :class:`~jobbalancer.errors.ConfigError` rather than a log line; serves HTTPS when
    ``server.tls_cert`` and ``server.tls_key`` are both set.
    """
    from jobbalancer.app import create_app  # the app pulls in the whole web stack

    # It holds the database password: no other process of its uid may read its memory or
    # environment, and whatever it creates is its user's alone (it starts no jobs).
    procsec.make_undumpable()
    procsec.private_umask()
    ensure_secret_key(settings)
    cert, key = tls_files(settings)
    with bind(settings.server.host, settings.server.port) as sock:
        config = uvicorn.Config(
            create_app(settings),
            access_log=access_log,
            log_level=settings.log_level.lower(),
            ssl_certfile=cert,
            ssl_keyfile=key,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
            server_header=False,
            http=BoundedHttpTools,
            # Clients are who the socket says: an X-Forwarded-For from 127.0.0.1 (which
            # uvicorn believes by default) would let a local job pick its own address
            # for the login throttling.
            proxy_headers=False,
        )
        host, port = sock.getsockname()[:2]
        log.info("serving on %s://%s:%s", "https" if cert else "http", _url_host(host), port)
        if not cert:
            warn_without_tls(host, port)
        server = uvicorn.Server(config)
        with _return_after_signal(server):
            server.run(sockets=[sock])


def tls_files(settings: Settings) -> tuple[str | None, str | None]:
    """(certificate, key) paths when TLS is on, else (None, None); checks they exist."""
    cert, key = settings.server.tls_cert, settings.server.tls_key
    if not cert and not key:
        return None, None
    if not (cert and key):
        raise errors.ConfigError(
            "TLS needs both a certificate and a key: give --tls-cert and --tls-key "
            "(server.tls_cert / server.tls_key in the config file)"
        )
    for what, path in (("certificate", cert), ("key", key)):
        if not Path(path).is_file():
            raise errors.ConfigError(f"TLS {what} {path} does not exist or is not a file")
    return cert, key


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a ConfigError that says what to change."""
    try:
        family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server((host, port), family=family, backlog=2048)
        # Say it is TCP (create_server leaves proto 0): asyncio turns Nagle off only on
        # sockets that do, and with Nagle on every answer on a kept-alive connection
        # waited ~40 ms for the client's delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, sock.detach())
    except socket.gaierror as exc:
        raise errors.ConfigError(
            f"cannot resolve host {host!r} ({exc.strerror}): set --host / server.host "
            "to an address of this machine, e.g. 127.0.0.1 or 0.0.0.0"
        ) from exc
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise errors.ConfigError(
            f"cannot listen on {host}:{port}: {reason}. Is another server running there? "
            "Stop it, or pick another port with --port / server.port"
        ) from exc
    sock.set_inheritable(True)
    return sock


def warn_without_tls(host: str, port: int) -> None:
    """One warning when plain HTTP is served beyond this machine."""
    if not is_loopback(host):
        log.warning(
            "serving on %s:%s without TLS: API keys and passwords cross the network in "
            "clear; set server.tls_cert and server.tls_key, or put a TLS proxy in front",
            _url_host(host),
            port,
        )


def is_loopback(host: str) -> bool:
    """Whether an address a socket is bound to is reachable from this machine only."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@contextlib.contextmanager
def _return_after_signal(server: uvicorn.Server) -> Iterator[None]:
    """Make a signal-triggered graceful shutdown end in a normal return.

    uvicorn re-raises the signal it shut down for once it is done, through the handler
    that was installed before it; with the defaults that kills the process (SIGTERM) or
    raises KeyboardInterrupt (SIGINT) after the clean shutdown. The handler installed here
    asks ``server`` to exit instead, so ``run_server`` returns and the process exits 0; and
    a signal that comes before uvicorn has put in its own handlers (while it starts) stops
    the server too, rather than being lost.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        log.debug("signal %s: stopping", signum)
        server.should_exit = True

    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, stop) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def ensure_secret_key(settings: Settings) -> None:
    """The key for secrets: JOBBALANCER_SECRET_KEY, else the key file, made (mode 0600)
    on the first start when there is neither (`up` makes it before its children start)."""
    if not settings.secret_key:
        vault.ensure_key_file("", settings.secret_key_path)
