"""``/account`` over HTTP, for every role: what one may do, changing one's own password
(the current one is needed; other sessions end, this one stays) and one's own API keys
(shown once, working on the API, revoked; never someone else's)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from jobbalancer import auth, db
from tests.web.conftest import PASSWORD, Web

NEW = "another horse battery"


def _shown_key(html: str) -> str:
    match = re.search(r'<code id="new-secret">([^<]+)</code>', html)
    assert match, "no key shown"
    return match.group(1)


def _keys(web: Web, user_id: int) -> list[auth.ApiKey]:
    with db.read(web.engine) as conn:
        return auth.list_api_keys(conn, user_id)


@pytest.mark.parametrize("role", ["viewer", "submitter", "operator", "admin"])
def test_every_role_has_an_account_page_linked_from_the_top_bar(web: Web, role: str) -> None:
    web.user("sam", role)
    client, _ = web.login("sam", PASSWORD)

    home = client.get("/").text
    page = client.get("/account")

    assert '<a class="who-name" href="/account"' in home
    assert page.status_code == 200
    assert "<h1>sam " in page.text and f"role-{role}" in page.text
    assert 'action="/account/password"' in page.text and 'action="/account/keys"' in page.text
    assert "No API keys." in page.text


def test_the_page_says_what_one_may_do(web: Web) -> None:
    with db.write(web.engine) as conn:
        auth.create_user(
            conn, "sam", "submitter", PASSWORD, commands_allowed=False, worker_classes=["default"]
        )
    client, _ = web.login("sam", PASSWORD)

    text = client.get("/account").text

    assert "stored scripts only" in text
    assert "<dt>Worker classes</dt><dd>default</dd>" in text


def test_changing_the_password_keeps_this_session_and_ends_the_others(web: Web) -> None:
    sam = web.user("sam", "submitter")
    client, csrf = web.login("sam", PASSWORD)
    other, _ = web.login("sam", PASSWORD)

    r = client.post(
        "/account/password",
        data={"csrf_token": csrf, "current_password": PASSWORD, "new_password": NEW,
              "repeat_password": NEW},
    )  # fmt: skip

    assert r.status_code == 303 and r.headers["location"] == "/account"
    page = client.get("/account")  # still signed in, on a new session
    assert page.status_code == 200 and "Password changed." in page.text
    assert other.get("/account").status_code == 303  # the other browser must log in again
    assert web.post_login(web.browser(), "sam", PASSWORD).status_code == 401  # type: ignore[attr-defined]
    web.login("sam", NEW)
    with db.read(web.engine) as conn:
        assert auth.get_user(conn, sam.id).name == "sam"


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        ({"current_password": "wrong password", "new_password": NEW, "repeat_password": NEW},
         403, "The current password is wrong."),
        ({"current_password": PASSWORD, "new_password": NEW, "repeat_password": NEW + "x"},
         422, "The new password and its repetition differ."),
        ({"current_password": PASSWORD, "new_password": "short", "repeat_password": "short"},
         422, "password must have at least 8 characters"),
        ({"current_password": PASSWORD, "new_password": PASSWORD,
          "repeat_password": PASSWORD}, 422, "is the same as the current one"),
        ({}, 422, "password must have at least 8 characters"),
        ({"current_password": PASSWORD, "new_password": "x" * 1001,
          "repeat_password": "x" * 1001}, 422, "at most 1000 characters"),
    ],
)  # fmt: skip
def test_a_refused_password_change_says_why_and_changes_nothing(
    web: Web, fields: dict[str, str], status: int, message: str
) -> None:
    web.user("sam", "viewer")
    client, csrf = web.login("sam", PASSWORD)

    r = client.post("/account/password", data={"csrf_token": csrf, **fields})

    assert r.status_code == status
    assert message in r.text
    assert client.get("/account").status_code == 200
    web.login("sam", PASSWORD)  # the old password still works


def test_guessing_the_current_password_is_throttled_like_a_login(
    web: Web, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "FIRST_WAIT", timedelta(minutes=1))  # none runs out meanwhile
    web.user("sam", "viewer")
    client, csrf = web.login("sam", PASSWORD)
    wrong = {"current_password": "guess", "new_password": NEW, "repeat_password": NEW}

    codes = [
        client.post("/account/password", data={"csrf_token": csrf, **wrong}).status_code
        for _ in range(auth.FREE_FAILURES + 1)
    ]
    after = client.post(
        "/account/password",
        data={"csrf_token": csrf, "current_password": PASSWORD, "new_password": NEW,
              "repeat_password": NEW},
    )  # fmt: skip

    assert codes == [403] * (auth.FREE_FAILURES + 1)
    assert after.status_code == 429 and "too many failed logins" in after.text
    assert 0 < int(after.headers["retry-after"]) <= 60
    assert web.post_login(web.browser(), "sam", PASSWORD).status_code == 429  # type: ignore[attr-defined]
    # From another address sam logs in as ever.
    other = web.browser(address="198.51.100.9")
    assert web.post_login(other, "sam", PASSWORD).status_code == 303  # type: ignore[attr-defined]


def test_own_api_keys_shown_once_work_and_revoke(web: Web) -> None:
    sam = web.user("sam", "viewer")
    client, csrf = web.login("sam", PASSWORD)

    r = client.post("/account/keys", data={"csrf_token": csrf, "name": "laptop"})

    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    key = _shown_key(r.text)
    assert 'data-url="/account"' in r.text  # the address switches back: a reload shows nothing
    api = web.browser()
    me = api.get("/api/v1/me", headers={"Authorization": f"Bearer {key}"})
    assert me.status_code == 200 and me.json()["name"] == "sam"
    page = client.get("/account").text
    assert key not in page and "laptop" in page and f"{key[:11]}…" in page
    assert client.get("/account/keys").headers["location"] == "/account"

    [record] = _keys(web, sam.id)
    r = client.post(f"/account/keys/{record.id}/revoke", data={"csrf_token": csrf})

    assert r.status_code == 303
    assert api.get("/api/v1/me", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    assert _keys(web, sam.id) == []


def test_someone_elses_key_cannot_be_revoked_from_ones_account(web: Web) -> None:
    olga = web.user("olga", "admin")
    with db.write(web.engine) as conn:
        record, _ = auth.create_api_key(conn, olga.id, "hers")
    web.user("sam", "submitter")
    client, csrf = web.login("sam", PASSWORD)

    r = client.post(f"/account/keys/{record.id}/revoke", data={"csrf_token": csrf})

    assert r.status_code == 303
    assert "no such API key" in client.get("/account").text
    assert [k.id for k in _keys(web, olga.id)] == [record.id]


def test_a_bad_key_name_is_refused_with_the_reason(web: Web) -> None:
    sam = web.user("sam", "viewer")
    client, csrf = web.login("sam", PASSWORD)

    r = client.post("/account/keys", data={"csrf_token": csrf, "name": "x" * 500})

    assert r.status_code == 422
    assert 'class="flash flash-error"' in r.text
    assert _keys(web, sam.id) == []


def test_account_forms_need_the_csrf_token(web: Web) -> None:
    sam = web.user("sam", "viewer")
    client, _ = web.login("sam", PASSWORD)

    r = client.post("/account/keys", data={"csrf_token": "forged", "name": "x"})

    assert r.status_code == 403
    assert _keys(web, sam.id) == []
