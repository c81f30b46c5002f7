"""The worker's presence in the registry: registering under a free name, cleaning up
after an earlier run of itself, the heartbeat, and coming back as a new session after
losing the old one.

It owns who the worker is in the database (name, id, session, owner tag) and the
tunables it reads with each heartbeat; the coordinator (:mod:`jobbalancer.worker.loop`)
reads them.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

import psutil
import sqlalchemy as sa

from jobbalancer import __version__, balancer, db, errors, registry, settings
from jobbalancer.settings import WorkerSettings
from jobbalancer.worker import capacity, fence, identity, runner

log = logging.getLogger(__name__)
T = TypeVar("T")
SCHEMA_RECHECK = 5.0  # seconds between looks at an older schema, waiting for its upgrade
MAX_DECISIONS = 20  # looks at one name's holder before giving up (it keeps changing)
# Exit codes the worker process may end with (cli.RET_CONFIG, cli.RET_SCHEMA; the CLI
# package is not imported from here: tests/unit/test_identity.py checks they agree).
EXIT_CONFIG = 4
EXIT_SCHEMA = 11


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
        self.instance = str(identity.Instance.here())  # this process, in workers.instance
        # What it offers its jobs (placement): set or detected once, stored at registration.
        self.capacity = capacity.detect(ws)
        self._me: identity.Me | None = None

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
                    log.warning(
                        "database schema %s is older than this version's %s: waiting for the "
                        "server or `jobbalancer db upgrade` to upgrade it (checking every %g s)",
                        exc.current or "(none yet)", exc.head, SCHEMA_RECHECK,
                    )  # fmt: skip
                    warned = True
            if self._draining.wait(SCHEMA_RECHECK):
                raise errors.SchemaTooOld(None, db.head_revision(), "stopped while waiting for "
                                          "the database schema to be upgraded")  # fmt: skip

    def register(self) -> None:
        """Register under our name (--name, or the first default name this worker may take:
        see identity.decide), read the tunables, and take waiting jobs for the free slots;
        retried until the database is there. ConfigError when the name is refused."""
        me = self._whoami()
        if not self.worker_id:  # the first start: a typo in --class must not make a class
            self._retry(self._check_class, "check the worker class")
        explicit = bool(self.ws.name) or bool(self.worker_id)  # once registered, our name
        if explicit:
            names = [self.name]
        else:
            names = identity.default_names(me.host, me.machine_id)
        for name in names:
            if self._take(name, me, explicit=explicit):
                return
        raise errors.ConfigError(
            f"the default worker names {names[0]} to {names[-1]} are all in use by live "
            "workers: give this worker a name of its own with --name (JOBBALANCER_WORKER_NAME)"
        )

    def _whoami(self) -> identity.Me:
        if self._me is None:
            path = self.ws.id_file
            mid = identity.machine_id(path) if path else identity.ephemeral_machine_id()
            self._me = identity.Me(mid, identity.host_name(), path)
        return self._me

    def _check_class(self) -> None:
        with db.read(self.engine) as conn:
            registry.check_class(conn, self.ws.worker_class)

    def _take(self, name: str, me: identity.Me, *, explicit: bool) -> bool:
        """Register as ``name`` if this worker may; False: try the next default name."""
        waited = False
        for _ in range(MAX_DECISIONS):
            look = functools.partial(self._decide, name, me, explicit=explicit, waited=waited)
            decision = self._retry(look, f"look up the worker name {name}")
            if isinstance(decision, identity.Next):
                return False
            if isinstance(decision, identity.Refuse):
                raise errors.ConfigError(decision.message, field="worker.name")
            if isinstance(decision, identity.Wait):
                self._wait_for_holder(name, decision.seconds)
                waited = True
                continue
            # Take: our predecessor's leftovers go before its jobs are recovered (retried).
            self._clean_up(name)
            take = functools.partial(self._register, name, me, explicit, waited)
            if self._retry(take, "register"):
                return True
        raise errors.ConfigError(f"could not take the worker name {name!r}: it keeps changing")

    def _decide(
        self, name: str, me: identity.Me, *, explicit: bool, waited: bool
    ) -> identity.Decision:
        with db.read(self.engine) as conn:
            holder = registry.holder(conn, name, lock=False)
            timeout = settings.load_tunables(conn).worker_timeout
        return identity.decide(holder, me, explicit=explicit, worker_timeout=timeout, waited=waited)

    def _wait_for_holder(self, name: str, seconds: float) -> None:
        log.warning(
            "worker name %s is held by a worker whose liveness cannot be told from here "
            "(another boot or PID namespace, or an older version): waiting %.1f s to see "
            "whether its heartbeat goes on", name, seconds,
        )  # fmt: skip
        if self._draining.wait(seconds):
            raise errors.ConfigError(f"stopped while waiting to take the worker name {name!r}")

    def _clean_up(self, name: str) -> None:
        """Kill what jobs of an earlier run of this worker left running, and remove their
        temp dirs: a worker killed with SIGKILL cannot clean up after its jobs."""
        self.owner = runner.owner_tag(name, str(self.engine.url))
        killed, removed = runner.clean_up_after(self.owner)
        if killed or removed:
            log.warning(
                "an earlier run of %s left %d job process(es) running and %d temp dir(s); "
                "removed them", name, killed, removed,
            )  # fmt: skip

    def _register(self, name: str, me: identity.Me, explicit: bool, waited: bool) -> bool:
        """The registration, if the name's holder is still one we may replace."""
        stats = machine_stats()
        sent = fence.clock()
        with db.write(self.engine) as conn:
            holder = registry.holder(conn, name)
            timeout = settings.load_tunables(conn).worker_timeout
            again = identity.decide(
                holder, me, explicit=explicit, worker_timeout=timeout, waited=waited
            )
            if not isinstance(again, identity.Take):
                return False  # it changed since we looked: decide again
            try:
                with conn.begin_nested():
                    ids = registry.register(
                        conn, name=name, host=me.host, worker_class=self.ws.worker_class,
                        max_jobs=self.ws.max_jobs, pid=os.getpid(), version=__version__,
                        stats=stats, machine_id=me.machine_id, instance=self.instance,
                        capacity=self.capacity,
                    )  # fmt: skip
            except sa.exc.IntegrityError:
                return False  # another process inserted the name first: decide again
            self.tunables = settings.load_tunables(conn)
            # A worker joining is a slot freeing up: fill it at once.
            balancer.assign_waiting(conn, worker_id=ids[0])
        self.renewed_at = sent
        self.name, (self.worker_id, self.session) = name, ids
        return True

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        self._thread.start()

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
            revision = db.schema_revision(conn)
        if state is not None:
            self.renewed_at = sent
        if revision != db.head_revision():
            self._schema_changed(revision)
        if state is None and not self._draining.is_set():
            self._lost_session()

    def _schema_changed(self, revision: str | None) -> None:
        """A running process cannot become the new code: drain, then exit 11 (under
        systemd it comes back on the version installed meanwhile)."""
        if self.exit_code == EXIT_SCHEMA:
            return
        log.error(
            "the database schema changed to %s under this worker (this version expects %s): "
            "draining, then exiting with code %d", revision, db.head_revision(), EXIT_SCHEMA,
        )  # fmt: skip
        self.exit_code = EXIT_SCHEMA
        self._draining.set()

    def _lost_session(self) -> None:
        # We were declared offline (silent too long) or another process took our name:
        # our jobs were recovered elsewhere, so stop them (first) and come back as a new
        # session, unless a live worker holds the name now: never fight over a record.
        log.error(
            "worker %s lost its registration; stopping its jobs and re-registering", self.name
        )
        self._kill_all("the worker lost its registration")
        try:
            self.register()
        except errors.ConfigError as exc:
            log.error("%s; draining, then exiting with code %d", exc.message, EXIT_CONFIG)
            self.exit_code = EXIT_CONFIG
            self._draining.set()
