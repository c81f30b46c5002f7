"""The exception hierarchy. HTTP answers and CLI exit codes map from these in one place each."""

from __future__ import annotations

from typing import Any


def with_field(message: str, field: str | None) -> str:
    """``message``, naming ``field`` in front unless it already does (every message a person
    reads names the field it is about)."""
    return f"{field}: {message}" if field and field not in message else message


class JobBalancerError(Exception):
    """Something went wrong in jobbalancer."""

    status: int = 500
    code: str = "error"

    def __init__(self, message: str | None = None, *, field: str | None = None) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        self.field = field
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class InvalidInput(JobBalancerError):
    """The request is not valid."""

    status = 422
    code = "invalid"


class BadRequest(JobBalancerError):
    """The request could not be read."""

    status = 400
    code = "bad_request"


class Unauthorized(JobBalancerError):
    """An API key or a login is needed: send 'Authorization: Bearer <key>'."""

    status = 401
    code = "unauthorized"


class Forbidden(JobBalancerError):
    """Your role does not allow this."""

    status = 403
    code = "forbidden"


class LoginThrottled(JobBalancerError):
    """Too many failed logins from your address: wait a little before trying again."""

    status = 429
    code = "throttled"

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds, for the Retry-After header


class NotFound(JobBalancerError):
    """No such object."""

    status = 404
    code = "not_found"


class Conflict(JobBalancerError):
    """The object is not in a state that allows this."""

    status = 409
    code = "conflict"


class Occupied(Conflict):
    """No worker had a free slot and the job asked for need_realtime."""

    code = "occupied"

    def __init__(self, job: Any, message: str | None = None) -> None:
        super().__init__(message)
        self.job = job


class DatabaseUnavailable(JobBalancerError):
    """The database cannot be reached; try again shortly."""

    status = 503
    code = "database_unavailable"


class SchemaMismatch(JobBalancerError):
    """The database schema is not the one this version of jobbalancer uses."""

    status = 503
    code = "schema_mismatch"

    def __init__(self, current: str | None, head: str, message: str) -> None:
        super().__init__(message)
        self.current = current
        self.head = head


class SchemaTooOld(SchemaMismatch):
    """The database schema is older than this version's: the server upgrades it when it
    starts, or run `jobbalancer db upgrade`."""


class SchemaTooNew(SchemaMismatch):
    """The database schema is newer than this version knows: upgrade jobbalancer here."""


class DatabaseRefused(JobBalancerError):
    """The database refused: this database role may not do that."""

    status = 403
    code = "database_refused"


class ConfigError(JobBalancerError):
    """The configuration is not valid."""

    code = "config"


class RootRefused(ConfigError):
    """Refusing to run jobs as root: pass --run-as dynamic to give each job a uid of its
    own, --run-as USER to run jobs as that user, start the worker as an unprivileged
    user, or --allow-root if you really mean it (jobs can then reach everything)."""

    code = "root_refused"
