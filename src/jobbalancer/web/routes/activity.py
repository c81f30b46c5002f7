"""``/activity`` (admins): the audit log, with the API's filters (actor, action, object,
time range) and its cursor pages."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from jobbalancer import audit, errors
from jobbalancer.service import activity
from jobbalancer.web import deps

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 100
Text = Annotated[str, Query(max_length=250)]


@dataclass(frozen=True)
class ActivityQuery:
    """The filters as the page's form sends them (empty: any)."""

    actor: str = ""
    action: str = ""
    object: str = ""
    since: str = ""
    until: str = ""
    cursor: str = ""

    def url(self, **changes: str) -> str:
        values = {**self.__dict__, **changes}
        query = urllib.parse.urlencode({k: v for k, v in values.items() if v})
        return f"/activity?{query}" if query else "/activity"


def _query(
    actor: Text = "",
    action: Text = "",
    object: Text = "",
    since: Text = "",
    until: Text = "",
    cursor: Annotated[str, Query(max_length=100)] = "",
) -> ActivityQuery:
    return ActivityQuery(actor, action, object, since, until, cursor)


@router.get("/activity")
def activity_page(page: deps.Admin, query: Annotated[ActivityQuery, Depends(_query)]) -> Response:
    error: str | None = None
    entries: list[audit.Entry] = []
    next_cursor: str | None = None
    try:
        entries, next_cursor = activity.page(
            page.engine, page.user, actor=query.actor.strip(), action=query.action.strip(),
            object=query.object.strip(), since=query.since.strip(), until=query.until.strip(),
            limit=PAGE_SIZE, cursor=query.cursor or None,
        )  # fmt: skip
    except errors.InvalidInput as exc:
        error = exc.message
    return page.render(
        "activity.html",
        active="activity",
        status=422 if error else 200,
        query=query,
        entries=entries,
        actions=audit.ACTIONS,
        filter_error=error,
        next_url=query.url(cursor=next_cursor) if next_cursor else None,
        first_url=query.url(cursor="") if query.cursor else None,
    )
