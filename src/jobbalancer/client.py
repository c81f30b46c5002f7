"""A Python client for the jobbalancer HTTP API.

    >>> from jobbalancer.client import Client
    >>> with Client("http://127.0.0.1:8080", api_key="jb_…") as jb:
    ...     job = jb.submit(command="echo hello")
    ...     for kind, event in jb.follow(job["id"]):
    ...         if kind == "output":
    ...             print(event["data"], end="")
    ...     final = jb.wait(job["id"])

Jobs, workers and the rest come back as the JSON objects ``docs/api.md`` describes (plain
dicts). An answer the API rejects raises :class:`ApiError` (status, short code, message,
field at fault); a server that cannot be reached raises :class:`ConnectionFailed`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Self
from urllib.parse import quote

if TYPE_CHECKING:
    # Imported where it is used: the server's process imports this module (through the
    # command line) but never makes a request, and httpx costs it 4-5 MiB.
    import httpx

__all__ = [
    "FINAL_STATES",
    "ApiError",
    "Client",
    "ClientError",
    "ConnectionFailed",
    "ServerEvent",
    "WaitTimeout",
    "job_spec",
    "parse_sse",
]

Stream = Literal["stdout", "stderr", "all"]
Event = tuple[str, dict[str, Any]]

FINAL_STATES = frozenset({"done", "failed", "timeout", "killed", "lost", "occupied", "skipped"})
_POLL_MIN, _POLL_MAX = 0.1, 2.0  # seconds between polls while waiting: grows while idle
_RECONNECTS = 5  # live stream: reconnections in a row before giving up (about 10 s)
_PAST_THE_END = 2**62  # a log offset beyond any output (the API's largest)
_IDS_PER_REQUEST = 500  # the job list's largest page, and its most ids per filter


class ClientError(Exception):
    """Something went wrong talking to the jobbalancer server."""


class ApiError(ClientError):
    """The server answered with an error (``{"error", "message", "field"?}``)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        body: Any = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.body = body
        super().__init__(f"{status} {code}: {message}")

    @property
    def job(self) -> dict[str, Any] | None:
        """The job an ``occupied`` rejection was recorded as, when the answer has one."""
        job = self.body.get("job") if isinstance(self.body, dict) else None
        return job if isinstance(job, dict) else None

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "message" in body:
            field = body.get("field")
            return cls(
                response.status_code,
                str(body.get("error") or f"http_{response.status_code}"),
                str(body["message"]),
                None if field is None else str(field),
                body,
            )
        text = response.text.strip()[:300] or response.reason_phrase
        return cls(response.status_code, f"http_{response.status_code}", text, None, body)


class ConnectionFailed(ClientError):
    """The server could not be reached (refused, timed out, TLS failure, cut off)."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"cannot reach {url}: {reason}")


class _StreamBroken(ConnectionFailed):
    """A live stream was cut off after it had started."""


class WaitTimeout(ClientError, TimeoutError):
    """A job did not finish within the time :meth:`Client.wait` was given."""

    def __init__(self, job_id: int, timeout: float) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} did not finish within {timeout:g} s")


class Client:
    """A connection to one jobbalancer server.

    ``url`` is the server's base URL (``http://127.0.0.1:8080``), ``api_key`` a key from
    the first start or ``jobbalancer keys create``, ``timeout`` the seconds any one
    request may take (live streams wait as long as their job runs). ``verify`` is passed
    to httpx: ``False`` or a CA bundle path for a server with a self-signed certificate.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        api_key: str | None = None,
        timeout: float = 30.0,
        *,
        verify: bool | str = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"User-Agent": "jobbalancer-client", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        import httpx

        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=timeout,
            verify=verify,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- jobs -----------------------------------------------------------------------------

    def submit(
        self,
        command: str | None = None,
        *,
        script: str | int | None = None,
        params: Sequence[str] | Mapping[str, Any] = (),
        watchdog: float | None = None,
        worker_class: str | int | None = None,
        need_realtime: bool = False,
        priority: int = 0,
        retries: int = 0,
        env: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        workdir: str | None = None,
        notify: Sequence[Mapping[str, Any]] = (),
        after: Sequence[int | Mapping[str, Any]] = (),
        cpus: float | None = None,
        memory: int | str | None = None,
        gpus: int | None = None,
        constraints: Mapping[str, str | bool] | None = None,
        secret_env: Mapping[str, str] | None = None,
        **later: Any,
    ) -> dict[str, Any]:
        """Submit one job: a shell ``command``, or a stored ``script`` (name or id) with
        ``params`` passed as separate arguments (by name, ``{"crf": 23}``, for a script
        that declares its parameters). Returns the new job.

        ``later``: the fields of starting and retrying later, as the API names them
        (``not_before`` an RFC 3339 string or an aware datetime, ``delay`` seconds,
        ``retry_delay``, ``retry_backoff``, ``retry_max_delay``, ``retry_jitter``,
        ``retry_on``); the job is ``delayed`` until it may start.

        ``workdir`` is an absolute directory on the worker to run in (None: a private
        temporary one); a worker where it is missing or not usable fails the job, saying why.
        ``notify``: the job's own notification rules, ``[{"on": ["failed"], "target":
        "ops-hook"}]`` (targets an admin made).

        ``after``: jobs to wait for, each an id (its success) or ``{"job": ID, "on":
        "success" | "failure" | "any"}``; the job is ``held`` until they end.

        ``secret_env``: environment variables set from named secrets, ``{"PGPASSWORD":
        "prod-db"}`` (the value reaches only the job; its output shows ``****``).

        With ``need_realtime`` and no free worker the server keeps the job as
        ``occupied`` and this raises :class:`ApiError` with code ``"occupied"`` (the job
        is in its ``.job``).
        """
        spec = job_spec(
            command,
            script=script,
            params=params,
            watchdog=watchdog,
            worker_class=worker_class,
            need_realtime=need_realtime,
            priority=priority,
            retries=retries,
            env=env,
            labels=labels,
            workdir=workdir,
            notify=notify,
            after=after,
            **later,
            secret_env=secret_env,
        )
        # Placement (docs/api.md): cpus, memory ("512M", "2G" or bytes), gpus, constraints.
        placement = {"cpus": cpus, "memory": memory, "gpus": gpus, "constraints": constraints}
        spec.update({k: v for k, v in placement.items() if v is not None})
        return self._json("POST", "/api/v1/jobs", json=spec)  # type: ignore[no-any-return]

    def submit_batch(self, specs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Submit up to 1000 jobs at once (each a dict as :func:`job_spec` makes); all or
        nothing on validation errors. Returns the jobs in the order given."""
        body = self._json("POST", "/api/v1/jobs/batch", json={"jobs": [dict(s) for s in specs]})
        return list(body["jobs"])

    def job(self, job_id: int) -> dict[str, Any]:
        """One job, as it is now."""
        return self._json("GET", f"/api/v1/jobs/{job_id}")  # type: ignore[no-any-return]

    def jobs(
        self,
        *,
        state: str | Sequence[str] | None = None,
        worker: str | None = None,
        worker_class: str | None = None,
        user: str | None = None,
        q: str | None = None,
        limit: int | None = None,
        page_size: int = 100,
        schedule_id: int | None = None,
        **filters: str,
    ) -> Iterator[dict[str, Any]]:
        """Jobs matching the filters, newest first, fetched page by page as you iterate.

        ``state`` is one state or several; ``q`` searches commands and scripts; ``limit``
        stops after that many jobs (None: all of them); ``schedule_id``: the jobs that
        schedule fired.
        """
        params: dict[str, str] = {k: v for k, v in filters.items() if v is not None}
        if schedule_id is not None:
            params["schedule_id"] = str(schedule_id)
        if state:
            params["state"] = state if isinstance(state, str) else ",".join(state)
        named = {"worker": worker, "worker_class": worker_class, "user": user, "q": q}
        params.update({k: v for k, v in named.items() if v})
        yield from self._pages("/api/v1/jobs", params, limit, page_size)

    def audit(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        object: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
        page_size: int = 200,
    ) -> Iterator[dict[str, Any]]:
        """Audit log entries (admins), newest first, fetched page by page as you iterate.

        ``actor`` is a user's name or id; ``action`` one action (``job.kill``) or an
        object's every one (``job``); ``object`` ``TYPE``, ``TYPE:ID`` or ``TYPE:NAME``;
        ``since``/``until`` times (ISO 8601) or durations back from now (``1h``, ``7d``).
        """
        named = {"actor": actor, "action": action, "object": object, "since": since,
                 "until": until}  # fmt: skip
        params = {k: v for k, v in named.items() if v}
        yield from self._pages("/api/v1/audit", params, limit, page_size)

    def _pages(
        self, path: str, params: dict[str, str], limit: int | None, page_size: int
    ) -> Iterator[dict[str, Any]]:
        """The items of a cursor-paged list, page by page, at most ``limit`` of them."""
        yielded = 0
        cursor: str | None = None
        while limit is None or yielded < limit:
            want = page_size if limit is None else min(page_size, limit - yielded)
            page = self._json("GET", path, params={**params, "limit": str(want)} | _cursor(cursor))
            for item in page["items"][:want]:
                yield item
                yielded += 1
            cursor = page.get("next_cursor")
            if not cursor or not page["items"]:
                return

    def jobs_by_id(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """These jobs as they are now, in one request per 500 ids (the API's most); ids
        that do not exist or that you may not see are left out."""
        return self._by_ids("id", ids)

    def retries_of(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """The automatic retries (next attempts) of these jobs, where there are any; each
        names the job it retries in ``retry_of``."""
        return self._by_ids("retry_of", ids)

    def log(self, job_id: int, stream: Stream = "all", offset: int = 0) -> tuple[str, int, str]:
        """A job's output from byte ``offset`` on: (text, offset to ask next, job state)."""
        response = self._request(
            "GET",
            f"/api/v1/jobs/{job_id}/log",
            params={"stream": stream, "offset": str(offset)},
            headers={"Accept": "text/plain"},
        )
        next_offset = int(response.headers.get("X-Log-Offset", offset + len(response.content)))
        return response.text, next_offset, response.headers.get("X-Job-State", "")

    def iter_log(self, job_id: int, stream: Stream = "all") -> Iterator[str]:
        """A job's whole output as it stands now, in pieces as the server hands them out."""
        offset = 0
        while True:
            text, next_offset, _ = self.log(job_id, stream, offset)
            if next_offset <= offset:
                return
            yield text
            offset = next_offset

    def follow(self, job_id: int, stream: Stream = "all", offset: int = 0) -> Iterator[Event]:
        """A job's output live: ``("output", {"stream", "data"})`` events as it is
        written (``stream`` picks stdout, stderr or both; ``offset`` skips that many bytes),
        then one ``("end", job)`` with the finished job.

        If the connection drops before the end (a proxy's idle cut-off, a server restart),
        it reconnects and resumes where it stopped, so no output is lost or repeated;
        :class:`ConnectionFailed` only when the server stays unreachable.
        """
        failures, connected = 0, False
        while True:
            try:
                for event in self._events(job_id, stream, offset):
                    failures, connected = 0, True
                    if event.id is not None:
                        offset = event.id
                    yield event.name, event.data
                    if event.name == "end":
                        return
                connected, reason = True, "the live stream kept closing before the job's end"
            except _StreamBroken as exc:
                connected, reason = True, exc.reason
            except ConnectionFailed as exc:
                if not connected:
                    raise  # never got through: the server is not there at all
                reason = exc.reason  # maybe restarting: try again for a while
            failures += 1
            if failures > _RECONNECTS:
                raise ConnectionFailed(self.url, reason)
            time.sleep(min(_POLL_MAX, _POLL_MIN * 2**failures))

    def wait(self, job_id: int, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job is finished and return it; :class:`WaitTimeout` after
        ``timeout`` seconds (None: as long as it takes)."""
        if timeout is not None:
            return self._poll_until_finished(job_id, timeout)
        # From an offset past any output the live stream sends just the end event.
        for name, payload in self.follow(job_id, "all", _PAST_THE_END):
            if name == "end":
                return payload
        raise AssertionError("unreachable: follow() ends with an end event")

    def kill(self, job_id: int) -> dict[str, Any]:
        """Kill a job: at once if it has not started, within seconds if it runs."""
        return self._json("POST", f"/api/v1/jobs/{job_id}/kill")  # type: ignore[no-any-return]

    def restart(self, job_id: int) -> dict[str, Any]:
        """Run a job's spec again as a new job (returned); the old one stays as it was."""
        return self._json("POST", f"/api/v1/jobs/{job_id}/restart")  # type: ignore[no-any-return]

    def delete(self, job_id: int) -> None:
        """Delete a finished job and its output (a running one must be killed first)."""
        self._request("DELETE", f"/api/v1/jobs/{job_id}")

    # -- the rest ---------------------------------------------------------------------------

    def scripts(self) -> list[dict[str, Any]]:
        """Every stored script, by name (with its body and declared ``parameters``)."""
        return list(self._json("GET", "/api/v1/scripts"))

    def script(self, ref: str | int) -> dict[str, Any]:
        """One stored script by name or id, with its declared ``parameters``."""
        path = f"/api/v1/scripts/{quote(str(ref), safe='')}"
        return self._json("GET", path)  # type: ignore[no-any-return]

    def workers(self) -> list[dict[str, Any]]:
        """Every known worker: name, state, class, load and active jobs."""
        body = self._json("GET", "/api/v1/workers")
        return list(body["items"] if isinstance(body, dict) else body)

    def secrets(self) -> list[dict[str, Any]]:
        """The secrets the caller may see (admins and operators: all). Never a value."""
        return list(self._json("GET", "/api/v1/secrets"))

    def set_secret(
        self,
        name: str,
        value: str,
        *,
        description: str = "",
        worker_classes: Sequence[str] | None = None,
        users: Sequence[str] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Create secret ``name`` or replace it whole (admins); (the secret, whether new)."""
        body = {"value": value, "description": description,
                "worker_classes": None if worker_classes is None else list(worker_classes),
                "users": None if users is None else list(users)}  # fmt: skip
        response = self._request("PUT", f"/api/v1/secrets/{quote(name, safe='')}", json=body)
        return response.json(), response.status_code == 201

    def delete_secret(self, name: str) -> None:
        """Delete a secret (admins); jobs naming it that have not started then fail."""
        self._request("DELETE", f"/api/v1/secrets/{quote(name, safe='')}")

    def notification_targets(self) -> list[dict[str, Any]]:
        """The notification targets (secrets never; URLs to admins only)."""
        return list(self._json("GET", "/api/v1/notification-targets"))

    def test_notification_target(self, target: str | int) -> dict[str, Any]:
        """Send a test notification now: ``{"delivered": bool, "error": why not}``."""
        path = f"/api/v1/notification-targets/{quote(str(target), safe='')}/test"
        return self._json("POST", path)  # type: ignore[no-any-return]

    def notifications(
        self,
        *,
        job: int | None = None,
        target: str | None = None,
        state: str | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Notifications and their delivery, newest first: a job's, or (admins) all."""
        params = {"job": job, "target": target, "state": state, "limit": limit}
        given = {k: v for k, v in params.items() if v is not None}
        return list(self._json("GET", "/api/v1/notifications", params=given))

    # -- schedules --------------------------------------------------------------------------

    def schedules(self) -> list[dict[str, Any]]:
        """Every schedule you may see, by name, each with its latest occurrence (``last``)."""
        return list(self._json("GET", "/api/v1/schedules"))

    def schedule(self, ref: str | int) -> dict[str, Any]:
        """One schedule (name or id) with ``next_runs`` and its latest ``occurrences``."""
        return self._json("GET", _schedule_path(ref))  # type: ignore[no-any-return]

    def create_schedule(
        self,
        name: str,
        cron: str,
        job: Mapping[str, Any],
        *,
        timezone: str = "UTC",
        **options: Any,
    ) -> dict[str, Any]:
        """A new schedule submitting ``job`` (a body as :func:`job_spec` makes) at the times
        of ``cron`` read in ``timezone``. ``options``: description, enabled, overlap
        (allow, skip, queue, replace), catch_up (none, latest, all), catch_up_max,
        start_at, end_at (RFC 3339 strings)."""
        body = {"name": name, "cron": cron, "timezone": timezone, "job": dict(job)}
        body.update({k: v for k, v in options.items() if v is not None})
        return self._json("POST", "/api/v1/schedules", json=body)  # type: ignore[no-any-return]

    def update_schedule(self, ref: str | int, **changes: Any) -> dict[str, Any]:
        """Change the fields given (``None`` clears start_at or end_at)."""
        return self._json("PATCH", _schedule_path(ref), json=changes)  # type: ignore[no-any-return]

    def delete_schedule(self, ref: str | int) -> None:
        """Delete a schedule and its history; the jobs it fired stay."""
        self._request("DELETE", _schedule_path(ref))

    def pause_schedule(self, ref: str | int) -> dict[str, Any]:
        return self._json("POST", _schedule_path(ref) + "/pause")  # type: ignore[no-any-return]

    def resume_schedule(self, ref: str | int) -> dict[str, Any]:
        return self._json("POST", _schedule_path(ref) + "/resume")  # type: ignore[no-any-return]

    def run_schedule(self, ref: str | int) -> dict[str, Any]:
        """Submit the schedule's job now; the occurrence (with ``job_id``)."""
        return self._json("POST", _schedule_path(ref) + "/run")  # type: ignore[no-any-return]

    def schedule_history(self, ref: str | int, limit: int = 50) -> list[dict[str, Any]]:
        """Occurrences, newest first: fired (``job_id``) or skipped (``reason``)."""
        path = _schedule_path(ref) + "/history"
        return list(self._json("GET", path, params={"limit": limit}))

    def preview_schedule(
        self, cron: str, timezone: str = "UTC", count: int = 5
    ) -> list[dict[str, Any]]:
        """The next ``count`` fire times (``utc``, ``local``) of an expression."""
        body = {"cron": cron, "timezone": timezone, "count": count}
        return list(self._json("POST", "/api/v1/schedules/preview", json=body)["next_runs"])

    def health(self) -> dict[str, Any]:
        """``/healthz``: ``{"status", "database"}``. Answers (rather than raises) when the
        server is up but its database is not: ``database`` is then ``"unavailable"``."""
        response = self._send("GET", "/healthz")
        if response.status_code in (200, 503):
            try:
                body = response.json()
            except ValueError:
                body = None
            if isinstance(body, dict):
                return body
        raise ApiError.from_response(response)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Any other API call: ``request("POST", "/api/v1/scripts", json={…})``; the
        decoded JSON answer (None when it has no body)."""
        return self._json(method, path, **kwargs)

    # -- plumbing -------------------------------------------------------------------------

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        import httpx

        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectionFailed(self.url, _reason(exc)) from exc

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._send(method, path, **kwargs)
        if response.is_error:
            raise ApiError.from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ApiError(
                response.status_code, "bad_response", f"the answer to {path} is not JSON"
            ) from exc

    def _by_ids(self, name: str, ids: Sequence[int]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for start in range(0, len(ids), _IDS_PER_REQUEST):
            chunk = ids[start : start + _IDS_PER_REQUEST]
            params = {name: ",".join(str(i) for i in chunk), "limit": str(_IDS_PER_REQUEST)}
            page = self._json("GET", "/api/v1/jobs", params=params)
            found.extend(page["items"])
        return found

    def _events(self, job_id: int, stream: Stream, offset: int) -> Iterator[ServerEvent]:
        """The job's server-sent events from ``offset``; ends when the server closes."""
        path = f"/api/v1/jobs/{job_id}/log/stream"
        params = {"stream": stream, "offset": str(offset)}
        headers = {"Accept": "text/event-stream"}
        import httpx

        # Waits as long as the job runs: no read timeout (the server sends keep-alives).
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)
        with self._connect_stream(path, params, headers, timeout) as response:
            try:
                for event in parse_sse(response.iter_lines()):
                    if event.name == "error":
                        raise _event_error(event.data)
                    yield event
            except httpx.TransportError as exc:
                raise _StreamBroken(self.url, _reason(exc)) from exc

    @contextlib.contextmanager
    def _connect_stream(
        self, path: str, params: dict[str, str], headers: dict[str, str], timeout: httpx.Timeout
    ) -> Iterator[httpx.Response]:
        import httpx

        request = self._http.build_request(
            "GET", path, params=params, headers=headers, timeout=timeout
        )
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise ConnectionFailed(self.url, _reason(exc)) from exc
        try:
            if response.is_error:
                response.read()
                raise ApiError.from_response(response)
            yield response
        finally:
            response.close()

    def _poll_until_finished(self, job_id: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        pause = _POLL_MIN
        while True:
            job = self.job(job_id)
            if job["state"] in FINAL_STATES:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(job_id, timeout)
            time.sleep(min(pause, left))
            pause = min(pause * 2, _POLL_MAX)


def job_spec(
    command: str | None = None,
    *,
    script: str | int | None = None,
    params: Sequence[str] | Mapping[str, Any] = (),
    watchdog: float | None = None,
    worker_class: str | int | None = None,
    need_realtime: bool = False,
    priority: int = 0,
    retries: int = 0,
    env: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    workdir: str | None = None,
    notify: Sequence[Mapping[str, Any]] = (),
    after: Sequence[int | Mapping[str, Any]] = (),
    secret_env: Mapping[str, str] | None = None,
    **later: Any,
) -> dict[str, Any]:
    """The JSON body of one submission; only the fields that differ from the defaults.

    ``after`` (jobs to wait for) may name a job of the same batch as ``{"ref": INDEX}``.
    ``later``: the fields of starting and retrying later (:data:`LATER_FIELDS`)."""
    unknown = set(later) - set(LATER_FIELDS)
    if unknown:
        raise TypeError(f"unknown submission fields: {', '.join(sorted(unknown))}")
    if (command is None) == (script is None):
        raise ValueError("give exactly one of command or script")
    spec: dict[str, Any] = {"command": command} if command is not None else {"script": script}
    optional: dict[str, Any] = {
        "params": dict(params) if isinstance(params, Mapping) else list(params),
        "watchdog": watchdog,
        "worker_class": worker_class,
        "need_realtime": need_realtime,
        "priority": priority,
        "retries": retries,
        "env": dict(env or {}),
        "labels": dict(labels or {}),
        "workdir": workdir,
        "notify": [dict(rule) for rule in notify],
        "after": [a if isinstance(a, int) else dict(a) for a in after],
        "secret_env": dict(secret_env or {}),
    }
    for key, value in later.items():
        optional[key] = value.isoformat() if isinstance(value, datetime) else value
    spec.update({key: value for key, value in optional.items() if value})
    return spec


def _schedule_path(ref: str | int) -> str:
    return f"/api/v1/schedules/{quote(str(ref), safe='')}"


# Starting and retrying later (docs/api.md, "Starting later, retrying later").
LATER_FIELDS = (
    "not_before", "delay", "retry_delay", "retry_backoff", "retry_max_delay", "retry_jitter",
    "retry_on",
)  # fmt: skip


class ServerEvent(NamedTuple):
    """One server-sent event: its name, its JSON data, and its id (a byte offset) if any."""

    name: str
    data: dict[str, Any]
    id: int | None


def parse_sse(lines: Iterable[str]) -> Iterator[ServerEvent]:
    """Decode the lines of a ``text/event-stream``.

    Comment lines (keep-alives) are skipped; an event without a name is ``message``; data
    that is not a JSON object is passed as ``{"data": text}``; an id that is not a number
    is ignored.
    """
    name, event_id = "", None
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r")
        if not line:
            if data:
                yield ServerEvent(name or "message", _decode(data), event_id)
            name, event_id, data = "", None, []
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if key == "event":
            name = value
        elif key == "data":
            data.append(value)
        elif key == "id":
            event_id = int(value) if value.isdigit() else None
    if data:
        yield ServerEvent(name or "message", _decode(data), event_id)


def _decode(data: list[str]) -> dict[str, Any]:
    text = "\n".join(data)
    try:
        value = json.loads(text)
    except ValueError:
        return {"data": text}
    return value if isinstance(value, dict) else {"data": value}


def _event_error(data: dict[str, Any]) -> ApiError:
    """An ``error`` event (the job was deleted while it was watched) as an ApiError."""
    code = str(data.get("error") or "error")
    status = 404 if code == "not_found" else 500
    return ApiError(status, code, str(data.get("message") or data), data.get("field"), data)


def _cursor(cursor: str | None) -> dict[str, str]:
    return {"cursor": cursor} if cursor else {}


def _reason(exc: httpx.TransportError) -> str:
    import httpx

    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError) and "refused" in text.lower():
        return "connection refused"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    return text
