"""``/activity`` over HTTP (admins only; filters in the address; a bad filter is a message
on the page) and the API key forms' scope and expiry (the account page, a user's page)."""

from __future__ import annotations

import re

from jobbalancer import auth, db
from tests.web.conftest import PASSWORD, Web


def test_only_admins_get_the_activity_page(web: Web) -> None:
    for role in ("viewer", "submitter", "operator"):
        web.user(f"u_{role}", role)
        client, _ = web.login(f"u_{role}", PASSWORD)
        assert client.get("/activity").status_code == 403
        assert 'href="/activity"' not in client.get("/").text
    admin, _ = web.login()
    page = admin.get("/activity")
    assert page.status_code == 200 and 'href="/activity" aria-current="page"' in page.text


def test_the_page_lists_and_filters_entries(web: Web) -> None:
    web.user("sam", "viewer")
    sam, _ = web.login("sam", PASSWORD)
    admin, csrf = web.login()
    r = admin.post("/classes", data={"name": "gpu", "max_jobs": "2", "csrf_token": csrf})
    assert r.status_code == 303

    def table(**params: str) -> str:
        return admin.get("/activity", params=params).text.split("<tbody>", 1)[1]

    everything = table()
    assert "class.create" in everything and "login" in everything
    only_sam = table(actor="sam")
    rows = re.findall(r"<tr data-id=", only_sam)
    assert len(rows) == 1 and "class.create" not in only_sam
    classes = table(object="class:gpu")
    assert "class.create" in classes and "max_jobs: 2" in classes
    bad = admin.get("/activity", params={"since": "tuesday"})
    assert bad.status_code == 422 and "since" in bad.text
    assert sam.get("/").status_code == 200


def test_key_forms_take_a_scope_and_an_expiry(web: Web) -> None:
    user = web.user("sue", "submitter")
    client, csrf = web.login("sue", PASSWORD)
    page = client.get("/account").text
    assert '<option value="submit" selected>' in page and 'value="operate"' not in page
    r = client.post("/account/keys", data={"name": "ci", "scope": "read", "expires": "2w",
                                           "csrf_token": csrf})  # fmt: skip
    assert r.status_code == 200, r.text
    refused = client.post("/account/keys", data={"name": "x", "scope": "admin",
                                                 "csrf_token": csrf})  # fmt: skip
    assert refused.status_code == 422 and "scope" in refused.text
    bad_date = client.post("/account/keys", data={"name": "y", "expires": "someday",
                                                  "csrf_token": csrf})  # fmt: skip
    assert bad_date.status_code == 422 and "expires" in bad_date.text
    with db.read(web.engine) as conn:
        [key] = auth.list_api_keys(conn, user.id)
    assert key.scope == auth.Scope.READ and key.expires_at is not None
    admin, admin_csrf = web.login()
    r = admin.post(f"/users/{user.id}/keys", data={"name": "ops", "scope": "operate",
                                                   "csrf_token": admin_csrf})  # fmt: skip
    assert r.status_code == 422 and "scope" in r.text
