"""Notifications: targets, rules, and delivering the outbox.

A target is where notifications go (``webhook``: a signed JSON POST; ``slack``: the same
with a ``text`` for chat; ``email``: plain text through the SMTP server of the settings).
Rules say which job states notify which targets: per job (``jobs.notify``), per worker
class, or for every job. :mod:`jobbalancer.outbox` writes a row per notification in the
job's own transaction; the leader's :class:`Dispatcher` delivers them at least once, in
order per target (a row being retried does not hold back the next), retrying with
exponential backoff for up to a day, then marks them ``failed``. Every target has a
delivery lane (a thread) of its own, so a dead or slow target delays only itself, and no
delivery ever runs inside a job's transaction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import http.client
import json
import logging
import queue
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import sqlalchemy as sa

from jobbalancer import db, errors, jobs, logs, outbox, refs, settings, vault
from jobbalancer.db import schema
from jobbalancer.db.types import AnyRow, utcnow

log = logging.getLogger(__name__)

T, R, N = schema.notification_targets, schema.notification_rules, schema.notifications

Kind = Literal["webhook", "slack", "email"]
KINDS: tuple[str, ...] = get_args(Kind)
EVENTS = outbox.EVENTS
STATES = ("pending", "delivered", "failed")
CONNECT_TIMEOUT = 5.0
TOTAL_TIMEOUT = 15.0
MAX_AGE = timedelta(days=1)
TAIL_BYTES = 2048
SIGNATURE_HEADER = "X-Jobbalancer-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"


# -- targets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A target as stored. ``secret`` is never shown: :meth:`public` leaves it out."""

    id: int
    name: str
    kind: str
    url: str | None
    secret: str | None
    recipients: tuple[str, ...]
    delivered: int
    failures: int
    created_at: datetime

    @classmethod
    def from_row(cls, row: AnyRow) -> Target:
        m = row._mapping
        return cls(
            id=m["id"], name=m["name"], kind=m["kind"], url=m["url"], secret=m["secret"],
            recipients=tuple(m["recipients"] or ()), delivered=int(m["delivered"]),
            failures=int(m["failures"]), created_at=m["created_at"],
        )  # fmt: skip

    @property
    def shown_url(self) -> str | None:
        """The URL as shown: a Slack webhook's path is its secret, so only its host."""
        if self.url is None or self.kind != "slack":
            return self.url
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}/…"


def list_targets(conn: sa.Connection) -> list[Target]:
    return [Target.from_row(r) for r in conn.execute(sa.select(T).order_by(T.c.name))]


def find_target(conn: sa.Connection, ref: str | int, *, field: str = "target") -> Target:
    """A target by name or id; InvalidInput naming ``field`` when there is none."""
    row = refs.find_row(conn, T, ref)
    if row is None:
        raise errors.InvalidInput(f"notification target {ref!r} does not exist", field=field)
    return Target.from_row(row)


def get_target(conn: sa.Connection, ref: str | int) -> Target:
    """A target by name or id; NotFound when there is none (a path, not a field)."""
    row = refs.find_row(conn, T, ref)
    if row is None:
        raise errors.NotFound(f"notification target {ref!r} does not exist")
    return Target.from_row(row)


def check_target(kind: str, url: str | None, recipients: Sequence[str]) -> None:
    """What a target of ``kind`` needs: a URL for webhooks, recipients for mail."""
    if kind in ("webhook", "slack"):
        if not url:
            raise errors.InvalidInput(f"a {kind} target needs a url", field="url")
        if recipients:
            raise errors.InvalidInput(f"a {kind} target has no recipients", field="recipients")
    elif not recipients:
        raise errors.InvalidInput("an email target needs recipients", field="recipients")
    elif url:
        raise errors.InvalidInput("an email target has no url", field="url")


def create_target(
    conn: sa.Connection,
    name: str,
    kind: str,
    *,
    url: str | None = None,
    secret: str | None = None,
    recipients: Sequence[str] = (),
    key: vault.Key | None = None,
) -> Target:
    """A new target; its ``secret`` is stored encrypted with ``key`` (bound to the
    target's id). The service always gives the server's key; without one (tests of this
    module) the secret is kept as given."""
    refs.check_name(name, "notification target")
    refs.ensure_free_name(conn, T, name, "notification target")
    check_target(kind, url, recipients)
    values = {
        "name": name, "kind": kind, "url": url, "secret": None,
        "recipients": list(recipients) or None, "delivered": 0, "failures": 0,
    }  # fmt: skip
    result = conn.execute(sa.insert(T).values(**values, created_at=utcnow()))
    new = result.inserted_primary_key
    assert new is not None
    target_id = int(new[0])
    if secret:
        conn.execute(
            sa.update(T).where(T.c.id == target_id).values(secret=_seal(key, secret, target_id))
        )
    outbox.forget(conn.engine)
    return get_target(conn, target_id)


def _context(target_id: int) -> str:
    """What a target's sealed secret is bound to: its id (its name may change)."""
    return f"notification-target:{target_id}"


def _seal(key: vault.Key | None, secret: str, target_id: int) -> str:
    return secret if key is None else vault.seal(key, secret, _context(target_id)) or secret


def opened(target: Target, config: settings.Settings) -> Target:
    """The target with its secret decrypted, to sign a body (vault.NoKey if it cannot be)."""
    if not vault.is_sealed(target.secret):
        return target
    key = vault.from_settings(config)
    return dataclasses.replace(target, secret=vault.unseal(key, target.secret, _context(target.id)))


def seal_stored(conn: sa.Connection, key: vault.Key) -> int:
    """Encrypt the secrets an older version stored in clear; how many (the server's start)."""
    rows = conn.execute(sa.select(T.c.id, T.c.secret).where(T.c.secret.is_not(None))).all()
    clear = [(r.id, r.secret) for r in rows if not vault.is_sealed(r.secret)]
    for target_id, secret in clear:
        sealed = _seal(key, secret, target_id)
        conn.execute(sa.update(T).where(T.c.id == target_id).values(secret=sealed))
    return len(clear)


def update_target(
    conn: sa.Connection,
    target_id: int,
    changes: Mapping[str, Any],
    key: vault.Key | None = None,
) -> Target:
    """Change a target (a name, url, secret or recipients); the kind stays. A new secret
    is encrypted with ``key`` as in :func:`create_target`."""
    current = get_target(conn, target_id)
    values = dict(changes)
    if "name" in values:
        refs.check_name(values["name"], "notification target")
        refs.ensure_free_name(conn, T, values["name"], "notification target", target_id)
    if "recipients" in values:
        values["recipients"] = list(values["recipients"] or ()) or None
    if "secret" in values:
        values["secret"] = _seal(key, values["secret"], target_id) if values["secret"] else None
    url = values.get("url", current.url)
    recipients = values["recipients"] or () if "recipients" in values else current.recipients
    check_target(current.kind, url, recipients)
    if values:
        conn.execute(sa.update(T).where(T.c.id == target_id).values(**values))
    outbox.forget(conn.engine)
    return get_target(conn, target_id)


def delete_target(conn: sa.Connection, target_id: int) -> Target:
    """Delete a target and the rules naming it; its undelivered notifications fail."""
    target = get_target(conn, target_id)
    conn.execute(sa.delete(R).where(R.c.target_id == target_id))
    conn.execute(
        sa.update(N)
        .where(N.c.target_id == target_id, N.c.state == "pending")
        .values(state="failed", last_error="the target was deleted", lease_until=None)
    )
    conn.execute(sa.delete(T).where(T.c.id == target_id))
    outbox.forget(conn.engine)
    return target


# -- rules --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """An admin's rule: jobs of ``worker_class`` (None: every job) ending ``on`` → target."""

    id: int
    on: tuple[str, ...]
    target_id: int
    target: str
    worker_class_id: int | None
    worker_class: str | None


def list_rules(conn: sa.Connection) -> list[Rule]:
    c = schema.worker_classes
    query = (
        sa.select(R, T.c.name.label("target"), c.c.name.label("worker_class"))
        .select_from(R.join(T, T.c.id == R.c.target_id).outerjoin(c, c.c.id == R.c.worker_class_id))
        .order_by(R.c.id)
    )
    return [
        Rule(
            id=r.id,
            on=tuple(r.on.strip(",").split(",")),
            target_id=r.target_id,
            target=r.target,
            worker_class_id=r.worker_class_id,
            worker_class=r.worker_class,
        )
        for r in conn.execute(query)
    ]


def create_rule(
    conn: sa.Connection, on: Sequence[str], target_id: int, worker_class_id: int | None
) -> Rule:
    states = _states(on, "on")
    result = conn.execute(
        sa.insert(R).values(
            on="," + ",".join(states) + ",",
            target_id=target_id,
            worker_class_id=worker_class_id,
            created_at=utcnow(),
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    outbox.forget(conn.engine)
    return next(r for r in list_rules(conn) if r.id == int(key[0]))


def delete_rule(conn: sa.Connection, rule_id: int) -> None:
    if conn.execute(sa.delete(R).where(R.c.id == rule_id)).rowcount != 1:
        raise errors.NotFound(f"notification rule {rule_id} does not exist")
    outbox.forget(conn.engine)


def delete_class_rules(conn: sa.Connection, worker_class_id: int) -> None:
    """A deleted class's rules go with it."""
    conn.execute(sa.delete(R).where(R.c.worker_class_id == worker_class_id))
    outbox.forget(conn.engine)


def _states(on: Sequence[str], field: str) -> list[str]:
    if not on:
        raise errors.InvalidInput("name at least one state", field=field)
    for i, state in enumerate(on):
        if state not in EVENTS:
            raise errors.InvalidInput(
                f"unknown state {state!r}; one of {', '.join(EVENTS)}", field=f"{field}.{i}"
            )
    return list(dict.fromkeys(on))


def job_rules(
    conn: sa.Connection, given: Sequence[tuple[Sequence[str], str | int]], where: str = ""
) -> tuple[dict[str, Any], ...]:
    """A submission's ``notify`` rules as stored on the job: targets by id. Only targets
    an admin made can be named (a submitter cannot make the server call any address)."""
    found = []
    for i, (on, ref) in enumerate(given):
        field = f"{where}notify.{i}"
        states = _states(on, f"{field}.on")
        target = find_target(conn, ref, field=f"{field}.target")
        found.append({"on": states, "target": target.id})
    return tuple(found)


# -- notifications ------------------------------------------------------------------------


@dataclass(frozen=True)
class Notification:
    id: int
    job_id: int
    target_id: int
    target: str | None
    event: str
    key: str
    state: str
    attempts: int
    next_at: datetime
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None

    @classmethod
    def from_row(cls, row: AnyRow) -> Notification:
        m = row._mapping
        return cls(**{name: m[name] for name in cls.__dataclass_fields__})


def list_notifications(
    conn: sa.Connection,
    *,
    job_id: int | None = None,
    target_id: int | None = None,
    state: str | None = None,
    limit: int = 100,
) -> list[Notification]:
    """Notifications, newest first."""
    query = (
        sa.select(N, T.c.name.label("target"))
        .select_from(N.outerjoin(T, T.c.id == N.c.target_id))
        .order_by(N.c.id.desc())
        .limit(limit)
    )
    if job_id is not None:
        query = query.where(N.c.job_id == job_id)
    if target_id is not None:
        query = query.where(N.c.target_id == target_id)
    if state is not None:
        query = query.where(N.c.state == state)
    return [Notification.from_row(r) for r in conn.execute(query)]


def pending_count(conn: sa.Connection) -> int:
    query = sa.select(sa.func.count()).select_from(N).where(N.c.state == "pending")
    return int(conn.execute(query).scalar_one())


# -- what is sent -------------------------------------------------------------------------


def payload(conn: sa.Connection, event: str, job_id: int, base_url: str) -> dict[str, Any]:
    """The document sent for job ``job_id``'s ``event``. Never its env."""
    doc: dict[str, Any] = {"job_id": job_id, "state": event, "url": f"{base_url}/jobs/{job_id}"}
    try:
        job = jobs.get(conn, job_id)
    except errors.NotFound:
        return {**doc, "error": "the job was deleted"}
    duration = None
    if job.started_at is not None and job.finished_at is not None:
        duration = round((job.finished_at - job.started_at).total_seconds(), 3)
    return {
        **doc,
        "job_state": job.state.value,
        "exit_code": job.exit_code,
        "signal": job.signal,
        "error": job.error,
        "command": job.command,
        "script": job.script_name,
        "worker_class": job.worker_class,
        "worker": job.worker_name,
        "user": job.user_name,
        "attempt": job.attempt,
        "labels": dict(job.labels),
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "duration": duration,
        "stdout_tail": _tail(conn, job, "stdout"),
        "stderr_tail": _tail(conn, job, "stderr"),
    }


def test_payload(target: Target, base_url: str) -> dict[str, Any]:
    return {
        "test": True,
        "state": "test",
        "target": target.name,
        "url": f"{base_url}/notifications",
    }


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when is not None else None


def _tail(conn: sa.Connection, job: jobs.Job, stream: logs.View) -> str:
    """The last lines of a stream, up to :data:`TAIL_BYTES` (whole lines where it can)."""
    data = b"".join(c.data for c in _last_chunks(conn, job.id, stream))[-TAIL_BYTES:]
    if len(data) == TAIL_BYTES and b"\n" in data[:-1]:
        data = data[data.index(b"\n") + 1 :]
    return data.decode("utf-8", errors="replace")


def _last_chunks(conn: sa.Connection, job_id: int, stream: str) -> list[logs.Chunk]:
    o = schema.job_output
    query = (
        sa.select(o.c.seq, o.c.data)
        .where(o.c.job_id == job_id, o.c.stream == stream)
        .order_by(o.c.seq.desc())
        .limit(4)
    )
    found, size = [], 0
    for row in conn.execute(query):
        found.append(logs.Chunk(seq=row.seq, stream=stream, pos=0, data=bytes(row.data)))
        size += len(found[-1].data)
        if size >= TAIL_BYTES:
            break
    return found[::-1]


def _chat_escape(text: str) -> str:
    """Slack's escaping of text from jobs: ``<!channel>``, ``<@U…>`` or ``<https://…|…>`` in
    a command or its output would otherwise ping everyone or show a link of its own."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def chat_text(doc: Mapping[str, Any]) -> str:
    """A line or two for chat (Slack's ``text``); what a job wrote is escaped."""
    if doc.get("test"):
        return f"jobbalancer: test notification for target {_chat_escape(str(doc.get('target')))}"
    what = doc.get("command") or (f"script {doc['script']}" if doc.get("script") else "")
    head = f"Job <{doc['url']}|#{doc['job_id']}> *{doc['state']}*"
    if doc.get("exit_code") is not None:
        head += f" (exit {doc['exit_code']})"
    parts = [head]
    if what:
        parts.append(f"`{_chat_escape(str(what)[:200])}`")
    if doc.get("worker"):
        parts.append(f"on {_chat_escape(str(doc['worker']))}")
    text = " ".join(parts)
    tail = (doc.get("stderr_tail") or "").strip()
    if doc["state"] != "done" and tail:
        text += "\n```" + _chat_escape(tail[-600:]) + "```"
    return text


def mail_text(doc: Mapping[str, Any]) -> tuple[str, str]:
    """Subject and plain-text body of a mail."""
    if doc.get("test"):
        return (
            f"[jobbalancer] test notification ({doc.get('target')})",
            "This is a test notification from jobbalancer.\n",
        )
    subject = f"[jobbalancer] job {doc['job_id']} {doc['state']}"
    if doc.get("exit_code") is not None:
        subject += f" (exit {doc['exit_code']})"
    lines = [f"Job {doc['job_id']} {doc['state']}.", "", f"Link: {doc['url']}"]
    for key in ("command", "script", "worker_class", "worker", "user", "exit_code", "error",
                "started_at", "finished_at", "duration"):  # fmt: skip
        if doc.get(key) is not None:
            lines.append(f"{key}: {doc[key]}")
    for key in ("stderr_tail", "stdout_tail"):
        if doc.get(key):
            lines += ["", f"--- last of {key.removesuffix('_tail')} ---", doc[key]]
    return subject, "\n".join(lines) + "\n"


# -- sending ------------------------------------------------------------------------------


class DeliveryError(Exception):
    """A delivery did not go through; the message says why."""


def signature(secret: str, body: bytes) -> str:
    """The ``X-Jobbalancer-Signature`` value: ``sha256=`` + HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Timeouts:
    connect: float = CONNECT_TIMEOUT
    total: float = TOTAL_TIMEOUT


def send(
    target: Target,
    doc: Mapping[str, Any],
    key: str,
    smtp: settings.NotifySettings,
    timeouts: Timeouts = Timeouts(),
) -> None:
    """Deliver ``doc`` to ``target``; DeliveryError says why it did not go through."""
    if target.kind == "email":
        subject, text = mail_text(doc)
        send_mail(smtp, target.recipients, subject, text, key, timeouts)
        return
    if target.kind == "slack":
        doc = {"text": chat_text(doc), **doc}
    body = json.dumps(doc, separators=(",", ":"), default=str).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "jobbalancer",
        IDEMPOTENCY_HEADER: key,
        "X-Jobbalancer-Delivery": key,
    }
    if target.secret:
        headers[SIGNATURE_HEADER] = signature(target.secret, body)
    assert target.url is not None
    post(target.url, body, headers, timeouts)


class _Deadline:
    """Cuts a connection ``total`` seconds after it starts: a socket timeout bounds one
    read, not a server that answers a byte, or an SMTP reply, just before each runs out.
    ``sock`` gives the connection's current socket (STARTTLS replaces it)."""

    def __init__(self, total: float, sock: Callable[[], socket.socket | None]) -> None:
        self.passed = False
        self._sock = sock
        self._timer = threading.Timer(total, self._cut)
        self._timer.daemon = True

    def _cut(self) -> None:
        self.passed = True
        found = self._sock()
        if found is not None:
            with contextlib.suppress(OSError):
                # the plain socket's shutdown, also under TLS: SSLSocket's would unwrap the
                # TLS layer under the reading thread's feet
                socket.socket.shutdown(found, socket.SHUT_RDWR)

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def post(url: str, body: bytes, headers: Mapping[str, str], timeouts: Timeouts) -> None:
    """POST ``body``; a 2xx answer within ``timeouts`` is a delivery. Redirects are not
    followed (the admin gave this address)."""
    parts = urlsplit(url)
    deadline = time.monotonic() + timeouts.total
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    try:
        conn = cls(parts.hostname or "", parts.port, timeout=timeouts.connect)
    except (ValueError, http.client.InvalidURL) as exc:  # stored before URLs were checked
        raise DeliveryError(f"the target's URL is not usable: {exc}") from exc
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    cut = _Deadline(timeouts.total, lambda: conn.sock)
    try:
        with cut:
            conn.connect()
            _left(conn, deadline)
            conn.request("POST", path, body=body, headers=dict(headers))
            _left(conn, deadline)
            response = conn.getresponse()
            answer = b""
            while len(answer) < 65536:
                _left(conn, deadline)
                piece = response.read1(8192)
                if not piece:
                    break
                answer += piece
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # host:port only: a URL's user:password@ or path (a Slack URL's secret) never shows
        where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        if cut.passed:
            raise DeliveryError(_why(where, TimeoutError("timed out"), timeouts)) from exc
        if isinstance(exc, http.client.InvalidURL | ValueError):
            # its message holds the path (a Slack URL's secret): never shown
            raise DeliveryError(
                "the target's URL is not usable (non-ASCII or control characters)"
            ) from exc
        raise DeliveryError(_why(where, exc, timeouts)) from exc
    finally:
        conn.close()
    if not 200 <= response.status < 300:
        text = answer[:200].decode("utf-8", errors="replace").strip()
        raise DeliveryError(f"HTTP {response.status} {response.reason}: {text}".rstrip(": "))


def _left(conn: http.client.HTTPConnection, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    if conn.sock is not None:
        conn.sock.settimeout(left)


def _why(where: str, exc: BaseException, timeouts: Timeouts) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return (
            f"{where} did not answer within {timeouts.total:g} s (connect {timeouts.connect:g} s)"
        )
    if isinstance(exc, ConnectionRefusedError):
        return f"cannot connect to {where}: connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {where}: {exc.strerror or exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS with {where} failed: {exc.reason or exc}"
    return f"{where}: {exc.__class__.__name__}: {exc}"


def send_mail(
    smtp: settings.NotifySettings,
    recipients: Sequence[str],
    subject: str,
    text: str,
    key: str,
    timeouts: Timeouts = Timeouts(),
) -> None:
    """Send a plain-text mail through the configured SMTP server."""
    if not smtp.smtp_host:
        raise DeliveryError("no SMTP server is configured (notify.smtp_host in the config file)")
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = smtp.smtp_from or (smtp.smtp_user or "jobbalancer@localhost")
    message["To"] = ", ".join(recipients)
    message["Message-ID"] = f"<{key}@jobbalancer>"
    message["X-Jobbalancer-Delivery"] = key
    message.set_content(text)
    where = f"{smtp.smtp_host}:{smtp.smtp_port}"
    started = time.monotonic()
    try:
        client = _smtp_client(smtp, timeouts)
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(f"SMTP cannot connect to {where}: {exc}") from exc
    left = max(timeouts.total - (time.monotonic() - started), 0.001)
    cut = _Deadline(left, lambda: client.sock)
    try:
        with cut, client:  # the deadline covers the QUIT on the way out too
            if smtp.smtp_security == "starttls":
                client.starttls(context=ssl.create_default_context())
            if smtp.smtp_user:
                client.login(smtp.smtp_user, smtp.smtp_password)
            client.send_message(message)
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryError(f"SMTP {where} refused the login of {smtp.smtp_user!r}") from exc
    except smtplib.SMTPRecipientsRefused as exc:
        # the addresses are admins' to see; the error shows to whoever sees the job
        codes = sorted({str(code) for code, _ in exc.recipients.values()})
        raise DeliveryError(
            f"SMTP {where} refused all {len(exc.recipients)} recipient(s) ({', '.join(codes)})"
        ) from exc
    except (OSError, smtplib.SMTPException, ValueError) as exc:
        if cut.passed:
            raise DeliveryError(f"SMTP {where} did not finish within {timeouts.total:g} s") from exc
        raise DeliveryError(f"SMTP {where}: {exc}") from exc


def _smtp_client(smtp: settings.NotifySettings, timeouts: Timeouts) -> smtplib.SMTP:
    if smtp.smtp_security == "tls":
        context = ssl.create_default_context()
        return smtplib.SMTP_SSL(
            smtp.smtp_host, smtp.smtp_port, timeout=timeouts.total, context=context
        )
    return smtplib.SMTP(smtp.smtp_host, smtp.smtp_port, timeout=timeouts.total)


def send_test(
    engine: sa.Engine, ref: str | int, config: settings.Settings, timeouts: Timeouts = Timeouts()
) -> str | None:
    """Send a test notification to a target now; None if it went through, else why not."""
    with db.read(engine) as conn:
        target = get_target(conn, ref)
    try:
        send(opened(target, config), test_payload(target, config.web_url),
             f"test-{time.time_ns():x}", config.notify, timeouts)  # fmt: skip
    except vault.NoKey as exc:
        return str(exc)
    except DeliveryError as exc:
        return str(exc)
    return None


# -- delivering the outbox ----------------------------------------------------------------

Clock = Callable[[sa.Connection], datetime]


def backoff(attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failed ones: 10 s doubling, ≤ 1 h."""
    return float(min(10 * 2 ** max(attempts - 1, 0), 3600))


_DUE = (
    sa.select(N.c.id, N.c.target_id)
    .where(
        N.c.state == "pending",
        N.c.next_at <= sa.bindparam("b_now"),
        sa.or_(N.c.lease_until.is_(None), N.c.lease_until < sa.bindparam("b_now")),
    )
    .order_by(N.c.id)
    .limit(200)
)


def _due(busy_targets: Sequence[int], queued: Sequence[int]) -> sa.Select[Any]:
    """Due notifications, leaving out targets whose lane is full and rows already queued:
    a dead target's backlog must not fill every look and starve the others."""
    query = _DUE
    if busy_targets:
        query = query.where(N.c.target_id.not_in(list(busy_targets)))
    if queued:
        query = query.where(N.c.id.not_in(list(queued)))
    return query


_CLAIM = (
    sa.update(N)
    .where(
        N.c.id == sa.bindparam("b_id"),
        N.c.state == "pending",
        sa.or_(N.c.lease_until.is_(None), N.c.lease_until < sa.bindparam("b_now")),
    )
    .values(lease_until=sa.bindparam("b_until"), leased_by=sa.bindparam("b_holder"))
)
_MINE = sa.and_(N.c.id == sa.bindparam("b_id"), N.c.leased_by == sa.bindparam("b_holder"))


class Dispatcher:
    """The leader's delivery of the outbox. :meth:`dispatch` finds due notifications and
    queues each on its target's lane; a lane (a thread per target with work) claims a row
    with a lease right before sending it, so no two servers send one row at once, and a
    server killed mid-send leaves a lease that expires: the next leader sends it again,
    with the same idempotency key.

    ``clock`` gives "now" (the database's, by default; tests move it to make retries
    due), ``backoff`` the wait after n failed attempts.
    """

    LANE_BACKLOG = 20

    def __init__(
        self,
        engine: sa.Engine,
        config: settings.Settings,
        holder: str,
        *,
        clock: Clock = db.now,
        backoff: Callable[[int], float] = backoff,
        max_age: timedelta = MAX_AGE,
        lease: float | None = None,
        timeouts: Timeouts = Timeouts(),
        interval: float = 0.5,
    ) -> None:
        self.engine = engine
        self.config = config
        self.holder = holder[:100]
        self.clock = clock
        self.backoff = backoff
        self.max_age = max_age
        self.lease = config.notify.delivery_lease if lease is None else lease
        self.timeouts = timeouts
        self.interval = interval
        self.active = True  # False: lanes drop what they hold (no longer the leader)
        self._lanes: dict[int, _Lane] = {}
        self._queued: set[int] = set()
        self._lock = threading.Lock()

    # -- finding work

    def dispatch(self) -> int:
        """Queue due notifications on their lanes; how many were queued."""
        with self._lock:
            busy = [t for t, lane in self._lanes.items() if lane.backlog >= self.LANE_BACKLOG]
            held = list(self._queued)
        with db.read(self.engine) as conn:
            due = conn.execute(_due(busy, held), {"b_now": self.clock(conn)}).all()
        queued = 0
        with self._lock:
            for row in due:
                lane = self._lanes.get(row.target_id)
                if row.id in self._queued or (lane and lane.backlog >= self.LANE_BACKLOG):
                    continue
                if lane is None or not lane.alive:
                    lane = self._lanes[row.target_id] = _Lane(self, row.target_id)
                self._queued.add(row.id)
                lane.put(row.id)
                queued += 1
        return queued

    def idle(self) -> bool:
        with self._lock:
            return not self._queued

    def wait_idle(self, timeout: float) -> bool:
        """Wait (bounded) until every queued notification was tried; for tests and stops."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.idle():
                return True
            time.sleep(0.01)
        return self.idle()

    def _done(self, notification_id: int) -> None:
        with self._lock:
            self._queued.discard(notification_id)

    # -- one delivery

    def deliver(self, notification_id: int) -> bool | None:
        """Claim and send one notification: True delivered, False failed this time, None
        not ours to send (delivered meanwhile, or another server holds it)."""
        with db.write(self.engine) as conn:
            now = self.clock(conn)
            until = now + timedelta(seconds=self.lease)
            params = {
                "b_id": notification_id,
                "b_now": now,
                "b_until": until,
                "b_holder": self.holder,
            }
            if conn.execute(_CLAIM, params).rowcount != 1:
                return None
        with db.read(self.engine) as conn:  # the write lock is not held while reading
            row = conn.execute(sa.select(N).where(N.c.id == notification_id)).one()
            target_row = conn.execute(sa.select(T).where(T.c.id == row.target_id)).first()
            doc = payload(conn, row.event, row.job_id, self.config.web_url)
        if target_row is None:
            self._record(notification_id, row.target_id, "the target was deleted", final=True)
            return False
        try:
            target = opened(Target.from_row(target_row), self.config)
            send(target, doc, row.key, self.config.notify, self.timeouts)
        except DeliveryError as exc:
            self._record(notification_id, row.target_id, str(exc))
            log.warning("notification %s to %s failed: %s", notification_id, target_row.name, exc)
            return False
        except Exception as exc:  # a bug must not kill the lane: recorded, retried
            log.exception("notification %s to %s failed", notification_id, target_row.name)
            self._record(notification_id, row.target_id, f"{exc.__class__.__name__}: {exc}")
            return False
        self._record(notification_id, row.target_id, None)
        return True

    def _record(
        self, notification_id: int, target_id: int, error: str | None, *, final: bool = False
    ) -> None:
        with db.write(self.engine) as conn:
            now = self.clock(conn)
            mine = {"b_id": notification_id, "b_holder": self.holder}
            stmt = sa.update(N).where(_MINE, N.c.state == "pending")
            if error is None:
                values: dict[str, Any] = {
                    "state": "delivered",
                    "delivered_at": now,
                    "last_error": None,
                }
                counter = T.c.delivered
            else:
                row = conn.execute(
                    sa.select(N.c.attempts, N.c.created_at).where(N.c.id == notification_id)
                ).one()
                attempts = row.attempts + 1
                given_up = final or now - row.created_at >= self.max_age
                values = {"last_error": error[:2000]}
                if given_up:
                    values["state"] = "failed"
                else:
                    values["next_at"] = now + timedelta(seconds=self.backoff(attempts))
                counter = T.c.failures
            values.update(attempts=N.c.attempts + 1, lease_until=None, leased_by=None)
            if conn.execute(stmt.values(**values), mine).rowcount == 1:
                conn.execute(sa.update(T).where(T.c.id == target_id).values({counter: counter + 1}))

    # -- the thread

    def run(self, is_leader: Callable[[], bool], stop: threading.Event) -> None:
        """Dispatch every ``interval`` while ``is_leader()``, until ``stop`` is set."""
        while not stop.is_set():
            self.active = is_leader()
            if self.active:
                try:
                    self.dispatch()
                except db.UNAVAILABLE:
                    pass  # the supervisor says so; the next round tries again
                except Exception:
                    log.exception("notification dispatch failed; retrying")
            stop.wait(self.interval)
        self.active = False


class _Lane:
    """One target's deliveries, one at a time in the order queued, on a thread of its own;
    the thread ends when the lane is empty (a new one starts with the next work)."""

    def __init__(self, dispatcher: Dispatcher, target_id: int) -> None:
        self.dispatcher = dispatcher
        self.target_id = target_id
        self._queue: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.alive = True
        self._thread = threading.Thread(target=self._run, name=f"notify-{target_id}", daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def put(self, notification_id: int) -> None:
        self._queue.put(notification_id)

    def _run(self) -> None:
        d = self.dispatcher
        while True:
            try:
                notification_id = self._queue.get(timeout=5.0)
            except queue.Empty:
                with d._lock:
                    if self._queue.empty():
                        self.alive = False
                        return
                continue
            try:
                if d.active:
                    d.deliver(notification_id)
            except Exception:
                log.exception("notification %s could not be recorded", notification_id)
            finally:
                d._done(notification_id)
