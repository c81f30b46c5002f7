"""The worker's presence in the registry: registering under a free name, cleaning up
after an earlier run of itself, the heartbeat, and coming back as a new session after
losing the old one.

It owns who the worker is in the database (name, id, session, owner tag) and the
tunables it reads with each heartbeat; the coordinator (:mod:`jobbalancer.worker.loop`)
reads them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

import psutil
import sqlalchemy as sa

from jobbalancer import __version__, balancer, db, errors, registry, settings
from jobbalancer.settings import WorkerSettings
from jobbalancer.worker import fence, runner

log = logging.getLogger(__name__)
T = TypeVar("T")


class Retry(Protocol):
    """Calls ``fn`` until the database lets it through (the coordinator's ``_retry``)."""

    def __call__(self, fn: Callable[[], T], what: str, /) -> T: ...


def machine_stats() -> registry.Stats:
    memory = psutil.virtual_memory()
    return registry.Stats(
        load=round(os.getloadavg()[0], 2),
        cpu_count=psutil.cpu_count() or None,
        memory_total=int(memory.total),
        memory_available=int(memory.available),
    )


class Presence:
    """One worker's registration and heartbeat."""

    def __init__(
        self,
        engine: sa.Engine,
        ws: WorkerSettings,
        *,
        retry: Retry,
        kill_all: Callable[[str], None],
        draining: threading.Event,
        stopped: threading.Event,
    ) -> None:
        self.engine = engine
        self.ws = ws
        self.name = ws.name
        self.worker_id = 0
        self.session = ""
        self.owner = ""
        self.tunables = settings.Tunables()
        self._retry = retry
        self._kill_all = kill_all  # stops every running job, saying why
        self._draining = draining
        self._stopped = stopped  # the heartbeat ends with it
        self._thread: threading.Thread | None = None
        # When the last registration or heartbeat that went through was sent (fence.clock()):
        # the worker's lease on its jobs counts from there.
        self.renewed_at = 0.0
        # Seconds between heartbeats (the fencing may ask for shorter than configured).
        self.heartbeat_every: Callable[[], float] = lambda: ws.heartbeat_interval
        # What the worker process exits with once it stopped (0, or why it had to).
        self.exit_code = 0

    def wait_for_schema(self) -> None:
        """Wait until the database's schema is this version's: an older one is upgraded by
        the server (or `jobbalancer db upgrade`), never by a worker; a newer one is raised
        (SchemaTooNew: this machine needs the new version)."""
        warned = False
        while True:
            try:
                self._retry(lambda: db.check_schema(self.engine), "check the database schema")
                return
            except errors.SchemaTooOld as exc:
                if not warned:
                    log.warning("%s; waiting (checking every 5 s)", exc.message)
                    warned = True
            if self._draining.wait(5.0):
                raise errors.SchemaTooOld(None, db.head_revision(), "stopped while waiting for "
                                          "the database schema to be upgraded")  # fmt: skip

    def register(self) -> None:
        """Register (choosing a free name if none is set), read the tunables, and take
        waiting jobs for the free slots; retried until the database is there."""
        stats = machine_stats()
        host = socket.gethostname()
        if not self.name:
            self.name = self._retry(lambda: self._free_name(host), "choose a worker name")

        def register() -> tuple[int, str]:
            sent = fence.clock()
            with db.write(self.engine) as conn:
                ids = registry.register(
                    conn, name=self.name, host=host, worker_class=self.ws.worker_class,
                    max_jobs=self.ws.max_jobs, pid=os.getpid(), version=__version__,
                    stats=stats,
                )  # fmt: skip
                self.tunables = settings.load_tunables(conn)
                # A worker joining is a slot freeing up: fill it at once.
                balancer.assign_waiting(conn, worker_id=ids[0])
            self.renewed_at = sent
            return ids

        self.worker_id, self.session = self._retry(register, "register")

    def clean_up_after_predecessor(self) -> None:
        """Kill what jobs of an earlier run of this worker left running, and remove their
        temp dirs: a worker killed with SIGKILL cannot clean up after its jobs, which were
        recovered (lost, retried elsewhere) when it registered again."""
        self.owner = runner.owner_tag(self.name, str(self.engine.url))
        killed, removed = runner.clean_up_after(self.owner)
        if killed or removed:
            log.warning(
                "an earlier run of %s left %d job process(es) running and %d temp dir(s); "
                "removed them", self.name, killed, removed,
            )  # fmt: skip

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        self._thread.start()

    def _free_name(self, host: str) -> str:
        """The host name, or host-2, host-3… when a live worker on this host has it."""
        with db.read(self.engine) as conn:
            taken = {w.name: w for w in registry.list_all(conn) if w.name.startswith(host)}
        for n in range(1, 1000):
            name = host if n == 1 else f"{host}-{n}"
            other = taken.get(name)
            if other is None or other.state == "offline" or other.host != host:
                return name
            if other.pid is not None and not psutil.pid_exists(other.pid):
                return name  # our own earlier incarnation: the same worker
        raise errors.ConfigError("could not find a free worker name; pass --name")

    def _heartbeat_loop(self) -> None:
        while not self._stopped.wait(self.heartbeat_every()):
            # Descendants that escaped their job and re-parented to us end as zombies here.
            runner.reap_orphans()
            try:
                self._heartbeat()
            except Exception as exc:
                log.warning("heartbeat failed (%s); retrying", exc)

    def _heartbeat(self) -> None:
        stats = machine_stats()
        sent = fence.clock()
        with db.write(self.engine) as conn:
            state = registry.heartbeat(conn, self.worker_id, self.session, stats)
            self.tunables = settings.load_tunables(conn)
        if state is not None:
            self.renewed_at = sent
        if state is None and not self._draining.is_set():
            self._lost_session()

    def _lost_session(self) -> None:
        # We were declared offline (silent too long) or another process took our name:
        # our jobs were recovered elsewhere, so stop them (first) and come back as a new
        # session.
        log.error(
            "worker %s lost its registration; stopping its jobs and re-registering", self.name
        )
        self._kill_all("the worker lost its registration")
        self.register()
