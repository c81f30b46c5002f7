"""A TCP forwarder the tests put between jobbalancer and its database.

``cut()`` is what a database restart looks like from the outside: every open connection is
reset, and new ones are refused (nothing listens) until ``restore()``.

``hold()`` is a silent partition: no byte moves either way, but every socket stays open and
new connections are accepted and left silent (never connected upstream), until
``release()``. The kernel still acknowledges on the proxy's side, so TCP keepalives cannot
see it (the network-namespace link-down in test_host_cut_off does): it tests the fence.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading


class Proxy:
    def __init__(self, target: tuple[str, int], listen: tuple[str, int] = ("127.0.0.1", 0)):
        self.target = target
        self.host = listen[0]
        self.port = listen[1]
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()
        self._flowing = threading.Event()  # cleared while held
        self._flowing.set()
        self.accepted = 0  # connections forwarded upstream
        self.arrived = 0  # connections accepted, held ones included
        self._listen()

    # -- control ------------------------------------------------------------------------

    def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.close()
        for s in conns:
            _reset(s)

    def restore(self) -> None:
        self._listen()

    def hold(self) -> None:
        """Stop moving bytes, keeping every connection open; accept new ones silently."""
        self._flowing.clear()

    def release(self) -> None:
        """Move bytes again (connections accepted meanwhile go upstream now)."""
        self._flowing.set()

    def close(self) -> None:
        self._stopped.set()
        self._flowing.set()
        self.cut()

    # -- plumbing -----------------------------------------------------------------------

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        with self._lock:
            self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by cut()
            threading.Thread(target=self._connect, args=(listener, client), daemon=True).start()

    def _connect(self, listener: socket.socket, client: socket.socket) -> None:
        with self._lock:
            self._conns.add(client)  # a cut resets it, held or not
            self.arrived += 1
        # Held: accepted, and silent until released (or the proxy closes).
        while not self._flowing.wait(1.0):
            if self._stopped.is_set():
                break
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            self._drop(client)
            return
        with self._lock:
            if self._listener is not listener or self._stopped.is_set():  # cut meanwhile
                self._conns.discard(client)
                _reset(client)
                _reset(upstream)
                return
            self._conns |= {client, upstream}
            self.accepted += 1
        threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _drop(self, s: socket.socket) -> None:
        with self._lock:
            self._conns.discard(s)
        _reset(s)

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(a, selectors.EVENT_READ, b)
            sel.register(b, selectors.EVENT_READ, a)
            while True:
                if not self._flowing.is_set():
                    # Held: read nothing, so the peers' sends stall in the socket buffers.
                    if a.fileno() < 0 or b.fileno() < 0:
                        return  # reset by a cut meanwhile
                    self._flowing.wait(1.0)
                    continue
                for key, _ in sel.select(timeout=0.2):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = src.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except (OSError, ValueError):
            return
        finally:
            sel.close()
            with self._lock:
                self._conns -= {a, b}
            _reset(a)
            _reset(b)


def _reset(s: socket.socket) -> None:
    # SO_LINGER 0: close sends RST, as a crashed server's kernel would.
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()
