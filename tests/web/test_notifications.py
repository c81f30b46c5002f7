"""The Notifications page over HTTP: admins only; create a target (the secret is never on
the page), send a test that says why it failed, add a rule; a job's page lists its
notifications."""

from __future__ import annotations

import pytest

from jobbalancer import db, jobs, notify
from jobbalancer.settings import NotifySettings
from tests.event_loop import sql_on_event_loop
from tests.receivers import free_port, webhook
from tests.web.conftest import PASSWORD, Web

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])


def test_targets_tests_and_rules_on_the_page(web: Web) -> None:
    client, csrf = web.login()
    with webhook(secret="pssst") as hook:
        r = client.post(
            "/notifications/targets",
            data={"csrf_token": csrf, "name": "ops-hook", "kind": "webhook", "url": hook.url,
                  "secret": "pssst"},
        )  # fmt: skip
        assert r.status_code == 303
        page = client.get("/notifications").text
        assert "Notification target ops-hook created." in page and "pssst" not in page
        with db.read(web.engine) as conn:
            target = notify.get_target(conn, "ops-hook")
        with sql_on_event_loop(web.engine) as stalls:
            r = client.post(f"/notifications/targets/{target.id}/test", data={"csrf_token": csrf})
        assert r.status_code == 303
        assert stalls == []  # the route is async: its reads go to a thread
        assert "Test notification delivered to ops-hook." in client.get("/notifications").text
        assert hook.wait(1)[0].signature_ok

    # The receiver is gone now: the test says why.
    r = client.post(f"/notifications/targets/{target.id}/test", data={"csrf_token": csrf})
    assert "connection refused" in client.get("/notifications").text

    bad = client.post(
        "/notifications/targets",
        data={"csrf_token": csrf, "name": "x", "kind": "webhook", "url": "gopher://x"},
    )
    assert bad.status_code == 422 and "url" in bad.text

    r = client.post(
        "/notifications/rules",
        data={"csrf_token": csrf, "on": ["failed", "timeout"], "target": "ops-hook",
              "worker_class": ""},
    )  # fmt: skip
    assert r.status_code == 303
    page = client.get("/notifications").text
    assert "Rule added." in page and "failed, timeout" in page and "every class" in page


def test_only_admins_see_the_page(web: Web) -> None:
    web.user("olive", "operator")
    client, _ = web.login("olive", PASSWORD)
    assert client.get("/notifications").status_code == 403
    assert 'href="/notifications"' not in client.get("/").text


def test_a_job_page_lists_its_notifications(web: Web) -> None:
    with db.write(web.engine) as conn:
        target = notify.create_target(
            conn, "ops-hook", "webhook", url=f"http://127.0.0.1:{free_port()}/"
        )
        notify.create_rule(conn, ["killed"], target.id, None)
        [job_id] = jobs.create(conn, [jobs.Spec(worker_class_id=1, command="true")], None, None)
        jobs.request_kill(conn, job_id)
    d = notify.Dispatcher(web.engine, web.app.state.settings, "web-test")
    assert d.dispatch() == 1 and d.wait_idle(10)
    client, _ = web.login()
    page = client.get(f"/jobs/{job_id}").text
    assert 'id="job-notifications"' in page and "ops-hook" in page
    assert "pending" in page and "connection refused" in page


def test_the_settings_page_shows_the_mail_server_but_not_its_password(web: Web) -> None:
    web.app.state.settings = web.app.state.settings.model_copy(
        update={
            "notify": NotifySettings(
                smtp_host="smtp.example.test", smtp_user="jb", smtp_password="hunter2-secret"
            )
        }
    )
    client, _ = web.login()
    page = client.get("/settings").text
    assert "smtp.example.test:587 (starttls)" in page and "(password set)" in page
    assert "hunter2-secret" not in page
