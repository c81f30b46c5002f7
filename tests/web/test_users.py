"""The users pages over HTTP (admins only): create users with role, scripts-only flag and
classes; edit them; reset a password (shown once, sessions end); disable and enable;
create an API key (shown once) that works on the API, and revoke it."""

from __future__ import annotations

import re

from jobbalancer import auth, classes, db
from tests.web.conftest import PASSWORD, Web


def _user(web: Web, name: str) -> auth.User:
    with db.read(web.engine) as conn:
        return auth.find_user(conn, name)


def _shown_secret(html: str) -> str:
    match = re.search(r'<code id="new-secret">([^<]+)</code>', html)
    assert match, "no secret shown"
    return match.group(1)


def test_create_users_with_access(web: Web) -> None:
    client, csrf = web.login()
    with db.write(web.engine) as conn:
        classes.create(conn, "gpu")
    r = client.post(
        "/users",
        data={"csrf_token": csrf, "name": "sam", "password": PASSWORD, "role": "submitter",
              "scripts_only": "on", "classes_mode": "some", "worker_classes": ["gpu"]},
    )  # fmt: skip
    assert r.status_code == 303
    sam = _user(web, "sam")
    assert r.headers["location"] == f"/users/{sam.id}"
    assert (sam.role, sam.commands_allowed, sam.worker_classes) == ("submitter", False, ("gpu",))
    assert "User sam created." in client.get(r.headers["location"]).text
    web.login("sam", PASSWORD)  # the typed password works

    # Without a password, one is made and shown once
    r = client.post(
        "/users",
        data={"csrf_token": csrf, "name": "olga", "role": "operator", "classes_mode": "all"},
    )
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    olga = _user(web, "olga")
    assert (olga.role, olga.commands_allowed, olga.worker_classes) == ("operator", True, None)
    web.login("olga", _shown_secret(r.text))
    assert "new-secret" not in client.get(f"/users/{olga.id}").text

    listing = client.get("/users").text
    assert f'<tr data-id="{sam.id}" data-name="sam">' in listing and "scripts only" in listing

    for fields, message in (
        ({"name": "sam"}, "user &#39;sam&#39; already exists"),
        ({"name": "x", "password": "short"}, "password must have at least 8 characters"),
        ({"name": "x", "classes_mode": "some", "worker_classes": ["nope"]}, "nope"),
    ):
        bad = client.post("/users", data={"csrf_token": csrf, "role": "viewer", **fields})
        assert bad.status_code in (409, 422), fields
        assert message in bad.text and 'role="alert"' in bad.text, (fields, bad.text[:2000])


def test_edit_reset_disable_enable_delete(web: Web) -> None:
    client, csrf = web.login()
    sam = web.user("sam", "submitter")
    sam_client, _ = web.login("sam", PASSWORD)

    r = client.post(
        f"/users/{sam.id}/edit",
        data={"csrf_token": csrf, "role": "viewer", "classes_mode": "some"},
    )
    assert r.status_code == 303
    assert (_user(web, "sam").role, _user(web, "sam").worker_classes) == ("viewer", ())

    # A reset shows the new password once and logs the user out everywhere
    r = client.post(f"/users/{sam.id}/password", data={"csrf_token": csrf})
    assert r.status_code == 200 and "logged out everywhere" in r.text
    new_password = _shown_secret(r.text)
    assert sam_client.get("/").status_code == 303  # back to the login form
    sam_client, _ = web.login("sam", new_password)

    r = client.post(f"/users/{sam.id}/disable", data={"csrf_token": csrf})
    assert r.status_code == 303 and _user(web, "sam").disabled
    assert sam_client.get("/").status_code == 303
    assert web.post_login(web.browser(), "sam", new_password).status_code != 303  # type: ignore[attr-defined]
    r = client.post(f"/users/{sam.id}/enable", data={"csrf_token": csrf})
    assert r.status_code == 303 and not _user(web, "sam").disabled
    web.login("sam", new_password)

    r = client.post(f"/users/{sam.id}/delete", data={"csrf_token": csrf})
    assert r.status_code == 303 and "User sam deleted" in client.get("/users").text


def test_the_last_admin_stays(web: Web) -> None:
    client, csrf = web.login()
    admin = _user(web, "admin")
    for action, data in (("disable", {}), ("delete", {}), ("edit", {"role": "viewer"})):
        r = client.post(f"/users/{admin.id}/{action}", data={"csrf_token": csrf, **data})
        text = client.get(f"/users/{admin.id}").text if r.status_code == 303 else r.text
        assert "last enabled admin" in text, action
    assert _user(web, "admin").is_admin and not _user(web, "admin").disabled


def test_api_keys_shown_once_work_and_revoke(web: Web) -> None:
    client, csrf = web.login()
    sam = web.user("sam", "submitter")
    r = client.post(f"/users/{sam.id}/keys", data={"csrf_token": csrf, "name": "ci"})
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    key = _shown_secret(r.text)
    assert 'class="btn btn-sm js-copy" data-copy="new-secret">Copy<' in r.text
    assert key.startswith("jb_") and f"{key[:11]}…" in r.text

    api = web.browser()
    me = api.get("/api/v1/me", headers={"Authorization": f"Bearer {key}"})
    assert me.status_code == 200 and me.json()["name"] == "sam"

    page = client.get(f"/users/{sam.id}").text
    assert key not in page and "ci" in page
    # Reloading the address the key was shown at shows the user's page, without it
    again = client.get(f"/users/{sam.id}/keys")
    assert again.status_code == 303 and again.headers["location"] == f"/users/{sam.id}"
    with db.read(web.engine) as conn:
        [record] = auth.list_api_keys(conn, sam.id)
    assert record.last_used_at is not None
    r = client.post(f"/users/{sam.id}/keys/{record.id}/revoke", data={"csrf_token": csrf})
    assert r.status_code == 303
    assert api.get("/api/v1/me", headers={"Authorization": f"Bearer {key}"}).status_code == 401


def test_only_admins(web: Web) -> None:
    target = web.user("sam", "submitter")
    web.user("olga", "operator")
    client, csrf = web.login("olga", PASSWORD)
    assert "/users" not in client.get("/").text.split("<main", 1)[0]  # not in the nav
    assert client.get("/users").status_code == 403
    assert client.get(f"/users/{target.id}").status_code == 403
    for path in ("/users", f"/users/{target.id}/password", f"/users/{target.id}/keys",
                 f"/users/{target.id}/disable"):  # fmt: skip
        r = client.post(path, data={"csrf_token": csrf, "name": "x", "role": "admin"})
        assert r.status_code == 403 and "admins only" in r.text, path
