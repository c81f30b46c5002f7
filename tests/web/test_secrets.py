"""The Secrets page over HTTP: admins only; create, replace, change limits, delete; a value
is never on a page (not after an error either); a job's page names its secrets."""

from __future__ import annotations

import pytest

from jobbalancer import db, jobs
from tests.web.conftest import PASSWORD, Web

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])
VALUE = "s3cret-web-value-91"


def test_create_replace_limit_and_delete(web: Web) -> None:
    web.user("alice", "submitter")
    client, csrf = web.login()
    r = client.post(
        "/secrets",
        data={"csrf_token": csrf, "name": "prod-db", "value": VALUE, "description": "db",
              "worker_classes_mode": "all", "users_mode": "some", "users": ["alice"]},
    )  # fmt: skip
    assert r.status_code == 303
    page = client.get("/secrets").text
    assert "Secret prod-db created." in page and VALUE not in page
    assert 'data-name="prod-db"' in page and "alice" in page

    # Edit: the form comes filled with the limits, never the value.
    edit = client.get("/secrets?edit=prod-db").text
    assert "Change secret prod-db" in edit and VALUE not in edit
    r = client.post(
        "/secrets",
        data={"csrf_token": csrf, "name": "prod-db", "value": "", "description": "db2",
              "worker_classes_mode": "some", "worker_classes": ["default"], "users_mode": "all"},
    )  # fmt: skip
    assert r.status_code == 303
    page = client.get("/secrets").text
    assert "Secret prod-db changed." in page and "db2" in page and "anyone" in page
    r = client.post(
        "/secrets",
        data={"csrf_token": csrf, "name": "prod-db", "value": "other-value",
              "worker_classes_mode": "all", "users_mode": "all"},
    )  # fmt: skip
    assert "Secret prod-db replaced." in client.get("/secrets").text

    secret_id = page.split('action="/secrets/')[1].split("/delete")[0]
    r = client.post(f"/secrets/{secret_id}/delete", data={"csrf_token": csrf})
    assert r.status_code == 303
    assert "Secret prod-db deleted." in client.get("/secrets").text


def test_an_error_names_the_field_and_never_echoes_the_value(web: Web) -> None:
    client, csrf = web.login()
    r = client.post(
        "/secrets",
        data={"csrf_token": csrf, "name": "123", "value": VALUE, "worker_classes_mode": "all",
              "users_mode": "all"},
    )  # fmt: skip
    assert r.status_code == 422 and "name" in r.text and VALUE not in r.text
    r = client.post("/secrets", data={"csrf_token": csrf, "name": "x", "value": ""})
    assert r.status_code == 422 and "value" in r.text


def test_only_admins_see_the_page(web: Web) -> None:
    web.user("olive", "operator")
    client, _ = web.login("olive", PASSWORD)
    assert client.get("/secrets").status_code == 403
    assert 'href="/secrets"' not in client.get("/").text
    admin, _ = web.login()
    assert 'href="/secrets"' in admin.get("/").text


def test_a_job_page_names_its_secrets_never_their_values(web: Web) -> None:
    with db.write(web.engine) as conn:
        spec = jobs.Spec(worker_class_id=1, command="psql", secret_env={"PGPASSWORD": "prod-db"},
                         secret_args={0: "api-token"}, params=("api-token",))  # fmt: skip
        [job_id] = jobs.create(conn, [spec], None, None)
    client, _ = web.login()
    page = client.get(f"/jobs/{job_id}").text
    assert "<code>PGPASSWORD</code> from secret <code>prod-db</code>" in page
    assert "parameter 1 from secret <code>api-token</code>" in page
