"""The audit module's pure parts: summaries that hide what they must, bounded diffs, time
filters, cursors; key scopes and expiry as text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobbalancer import audit, auth, errors

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)


def test_changes_name_what_changed_and_hide_secrets() -> None:
    before = {"role": "viewer", "disabled": False, "secret": "old", "classes": None}
    after = {"role": "admin", "disabled": True, "secret": "new", "classes": ["a", "b"]}
    text = audit.changes(before, after, hide=("secret",))
    assert text == ("role: viewer → admin; disabled: no → yes; secret (changed); "
                    "classes: none → a, b")  # fmt: skip
    assert "old" not in text and "new" not in text
    assert audit.changes(before, before) == ""
    assert audit.fields({"name": "x", "secret": None}, hide=("secret",)) == "name: x"


def test_a_long_summary_is_cut() -> None:
    text = audit.bounded("x" * (audit.MAX_SUMMARY * 2))
    assert len(text) <= audit.MAX_SUMMARY and text.endswith("more characters)")
    assert audit.bounded("short") == "short"


def test_a_diff_is_unified() -> None:
    text = audit.diff("a\nb\n", "a\nc", "s")
    assert "--- s (before)" in text and "-b\n" in text and "+c\n" in text


@pytest.mark.parametrize(
    ("given", "expected"),
    [("1h", NOW - timedelta(hours=1)), ("30m", NOW - timedelta(minutes=30)),
     ("7d", NOW - timedelta(days=7)), ("2w", NOW - timedelta(weeks=2)),
     ("2027-02-01T00:00:00Z", datetime(2027, 2, 1, tzinfo=UTC)),
     ("2027-02-01", datetime(2027, 2, 1, tzinfo=UTC)), ("", None)],
)  # fmt: skip
def test_time_filters(given: str, expected: datetime | None) -> None:
    assert audit.parse_time(given, "since", NOW) == expected


def test_a_bad_time_names_its_field() -> None:
    with pytest.raises(errors.InvalidInput) as caught:
        audit.parse_time("yesterday", "until", NOW)
    assert caught.value.field == "until"


def test_cursors_round_trip_and_refuse_others() -> None:
    assert audit.decode_cursor(audit.encode_cursor(42)) == 42
    with pytest.raises(errors.InvalidInput):
        audit.decode_cursor("am9iczo0Mg")  # a job list's cursor


@pytest.mark.parametrize(
    ("given", "expected"),
    [("30d", NOW + timedelta(days=30)), ("12h", NOW + timedelta(hours=12)),
     ("2w", NOW + timedelta(weeks=2)), ("2027-06-01", datetime(2027, 6, 1, tzinfo=UTC)),
     ("2027-06-01T10:00:00+02:00", datetime(2027, 6, 1, 8, tzinfo=UTC)), (None, None)],
)  # fmt: skip
def test_expiry_as_text(given: str | None, expected: datetime | None) -> None:
    assert auth.parse_expiry(given, NOW) == expected


def test_scopes_never_above_the_role() -> None:
    allowed = {r: [s.value for s in auth.Scope if auth.scope_allowed(s, r)] for r in auth.Role}
    assert allowed == {
        auth.Role.ADMIN: ["read", "submit", "operate", "admin"],
        auth.Role.OPERATOR: ["read", "submit", "operate"],
        auth.Role.SUBMITTER: ["read", "submit"],
        auth.Role.VIEWER: ["read"],
    }
    assert auth.lesser(auth.Role.ADMIN, auth.Role.SUBMITTER) == auth.Role.SUBMITTER
    with pytest.raises(errors.InvalidInput) as caught:
        auth.parse_scope("root")
    assert caught.value.field == "scope"


def test_every_action_is_a_dotted_name_of_an_object() -> None:
    for action in audit.ACTIONS:
        assert action == action.lower() and " " not in action
    assert len(set(audit.ACTIONS)) == len(audit.ACTIONS)
