"""Notification targets, rules and deliveries through the API, with real receivers on
127.0.0.1 (a signed webhook, a server that never answers, an SMTP server). The backends
are tests/backends/test_notify.py's; here SQLite."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa
from apihelpers import Api, submit
from tests.receivers import free_port, silent_server, smtp_server, webhook

from jobbalancer import db, jobs, notify
from jobbalancer.db import schema
from jobbalancer.settings import NotifySettings, Settings

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])
TARGETS = "/api/v1/notification-targets"


def make_target(api: Api, **spec: object) -> dict[str, object]:
    r = api.admin.post(TARGETS, json=spec)
    assert r.status_code == 201, r.text
    body: dict[str, object] = r.json()
    return body


def test_targets_keep_their_secret_write_only(api: Api) -> None:
    made = make_target(
        api, name="ops-hook", kind="webhook", url="https://hooks.example.test/x", secret="s3cret"
    )
    assert made["has_secret"] is True and "secret" not in made
    slack = make_target(
        api, name="chat", kind="slack", url="https://hooks.slack.test/services/T0/B0/XYZ"
    )
    assert slack["url"] == "https://hooks.slack.test/…"
    listed = api.admin.get(TARGETS).text
    assert "s3cret" not in listed and "XYZ" not in listed
    _, key = api.user("sam")
    as_submitter = api.client(key).get(TARGETS).json()
    assert [t["name"] for t in as_submitter] == ["chat", "ops-hook"]
    assert all(t["url"] is None for t in as_submitter)
    assert (
        api.client(key)
        .post(TARGETS, json={"name": "x", "kind": "webhook", "url": "http://a"})
        .status_code
        == 403
    )
    r = api.admin.patch(f"{TARGETS}/ops-hook", json={"secret": "other", "name": "ops"})
    assert r.status_code == 200 and r.json()["name"] == "ops" and "other" not in r.text
    assert api.admin.delete(f"{TARGETS}/ops").status_code == 204
    assert api.admin.get(f"{TARGETS}/ops").status_code == 404


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"name": "a", "kind": "webhook", "url": "file:///etc/passwd"}, "url"),
        ({"name": "a", "kind": "webhook", "url": "ftp://x.test/"}, "url"),
        ({"name": "a", "kind": "webhook", "url": "http://127.0.0.1:99999/x"}, "url"),
        ({"name": "a", "kind": "webhook", "url": "http://127.0.0.1:abc/x"}, "url"),
        ({"name": "a", "kind": "webhook", "url": "http://127.0.0.1:0/x"}, "url"),
        ({"name": "a", "kind": "webhook", "url": "http://127.0.0.1:/x"}, "url"),
        ({"name": "a", "kind": "webhook", "url": "http://a b.test/x"}, "url"),
        ({"name": "a", "kind": "slack", "url": "https://x.test/T0/B0/\x7f"}, "url"),
        ({"name": "a", "kind": "webhook", "url": "https://x.test/\u00fc"}, "url"),
        ({"name": "a", "kind": "slack", "url": "https://u:pw@x.test/hook"}, "url"),
        ({"name": "a", "kind": "webhook"}, "url"),
        ({"name": "a", "kind": "email"}, "recipients"),
        ({"name": "a", "kind": "email", "recipients": ["not an address"]}, "recipients"),
        ({"name": "a", "kind": "pager", "url": "https://x.test/"}, "kind"),
        ({"name": "", "kind": "webhook", "url": "https://x.test/"}, "name"),
    ],
)
def test_bad_targets_are_422_naming_the_field_and_nothing_is_saved(
    api: Api, spec: dict[str, object], field: str
) -> None:
    r = api.admin.post(TARGETS, json=spec)
    assert r.status_code == 422, r.text
    assert r.json()["field"].startswith(field)
    assert api.admin.get(TARGETS).json() == []


def test_a_submission_may_name_only_existing_targets_and_states(api: Api) -> None:
    make_target(api, name="ops-hook", kind="webhook", url="http://127.0.0.1:9/x")
    _, key = api.user("sam")
    client = api.client(key)
    bad_target = client.post(
        "/api/v1/jobs", json={"command": "true", "notify": [{"on": ["failed"], "target": "evil"}]}
    )
    assert bad_target.status_code == 422 and bad_target.json()["field"] == "notify.0.target"
    bad_state = client.post(
        "/api/v1/jobs",
        json={"command": "true", "notify": [{"on": ["failed", "exploded"], "target": "ops-hook"}]},
    )
    assert bad_state.status_code == 422 and bad_state.json()["field"] == "notify.0.on.1"
    url = client.post(
        "/api/v1/jobs",
        json={"command": "true", "notify": [{"on": ["done"], "target": "http://evil.test/"}]},
    )
    assert url.status_code == 422
    batch = client.post(
        "/api/v1/jobs/batch",
        json={
            "jobs": [
                {"command": "true"},
                {"command": "true", "notify": [{"on": ["done"], "target": "nope"}]},
            ]
        },
    )
    assert batch.status_code == 422 and batch.json()["field"] == "jobs.1.notify.0.target"
    with db.read(api.engine) as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.jobs)).scalar_one() == 0
    job = submit(client, command="false", notify=[{"on": ["failed"], "target": "ops-hook"}])
    assert job["notify"][0]["on"] == ["failed"]


def test_rules_per_class_and_global(api: Api) -> None:
    make_target(api, name="ops-hook", kind="webhook", url="http://127.0.0.1:9/x")
    r = api.admin.post("/api/v1/notification-rules", json={"on": ["failed"], "target": "ops-hook"})
    assert r.status_code == 201 and r.json()["worker_class"] is None
    r = api.admin.post(
        "/api/v1/notification-rules",
        json={"on": ["timeout"], "target": "ops-hook", "worker_class": "default"},
    )
    assert r.status_code == 201 and r.json()["worker_class"]["name"] == "default"
    rule_id = r.json()["id"]
    for bad, field in (
        ({"on": ["nope"], "target": "ops-hook"}, "on.0"),
        ({"on": ["done"], "target": "nope"}, "target"),
        ({"on": ["done"], "target": "ops-hook", "worker_class": "nope"}, "worker_class"),
    ):
        r = api.admin.post("/api/v1/notification-rules", json=bad)
        assert r.status_code == 422 and r.json()["field"] == field, r.text
    assert len(api.admin.get("/api/v1/notification-rules").json()) == 2
    assert api.admin.delete(f"/api/v1/notification-rules/{rule_id}").status_code == 204
    _, key = api.user("sam")
    assert (
        api.client(key)
        .post("/api/v1/notification-rules", json={"on": ["done"], "target": "ops-hook"})
        .status_code
        == 403
    )


def test_the_test_button_delivers_or_says_why(api: Api) -> None:
    with webhook(secret="s3cret") as hook:
        make_target(api, name="ops-hook", kind="webhook", url=hook.url, secret="s3cret")
        r = api.admin.post(f"{TARGETS}/ops-hook/test")
        assert r.json() == {"delivered": True, "error": None}
        [got] = hook.wait(1)
        assert got.signature_ok and got.body["test"] is True
    port = free_port()
    make_target(api, name="gone", kind="webhook", url=f"http://127.0.0.1:{port}/x")
    r = api.admin.post(f"{TARGETS}/gone/test").json()
    assert r["delivered"] is False and "connection refused" in r["error"]
    make_target(api, name="mail", kind="email", recipients=["ops@example.test"])
    r = api.admin.post(f"{TARGETS}/mail/test").json()
    assert r["delivered"] is False and "no SMTP server is configured" in r["error"]


def test_mail_test_through_a_real_smtp_server_and_one_that_cannot_connect(
    api: Api, engine: sa.Engine
) -> None:
    with smtp_server() as box:
        make_target(api, name="mail", kind="email", recipients=["ops@example.test"])
        config = Settings(
            notify=NotifySettings(smtp_host="127.0.0.1", smtp_port=box.port, smtp_security="none")
        )
        assert notify.send_test(engine, "mail", config) is None
        [message] = box.wait(1)
        assert "test notification" in message["Subject"]
    dead = Settings(notify=NotifySettings(smtp_host="127.0.0.1", smtp_port=free_port()))
    error = notify.send_test(engine, "mail", dead)
    assert error is not None and error.startswith("SMTP cannot connect to 127.0.0.1:")


def test_a_failed_job_lists_its_delivery_and_metrics_count_it(api: Api, engine: sa.Engine) -> None:
    with webhook(secret="s3cret") as hook:
        made = make_target(api, name="ops-hook", kind="webhook", url=hook.url, secret="s3cret")
        api.worker("node-1")
        job = submit(api.admin, command="false", notify=[{"on": ["failed"], "target": "ops-hook"}])
        api.finish(job["id"], jobs.State.FAILED, exit_code=3)
        d = notify.Dispatcher(engine, api.app.state.settings, "api-test")
        assert d.dispatch() == 1 and d.wait_idle(10)
        [got] = hook.wait(1)
        assert got.body["exit_code"] == 3
    listed = api.admin.get("/api/v1/notifications", params={"job": job["id"]}).json()
    assert [(n["target"], n["state"], n["event"]) for n in listed] == [
        ("ops-hook", "delivered", "failed")
    ]
    assert api.admin.get(f"{TARGETS}/{made['id']}").json()["delivered"] == 1
    metrics = api.admin.get("/metrics").text
    assert 'jobbalancer_notifications_delivered_total{target="ops-hook"} 1.0' in metrics
    _, key = api.user("sam")
    assert (
        api.client(key).get("/api/v1/notifications", params={"job": job["id"]}).status_code == 404
    )
    assert api.client(key).get("/api/v1/notifications").status_code == 403


def test_a_target_that_never_answers_delays_neither_jobs_nor_other_targets(
    api: Api, engine: sa.Engine
) -> None:
    with silent_server() as never, webhook() as hook:
        make_target(api, name="never", kind="webhook", url=never)
        make_target(api, name="good", kind="webhook", url=hook.url)
        api.admin.post("/api/v1/notification-rules", json={"on": ["done"], "target": "never"})
        d = notify.Dispatcher(engine, api.app.state.settings, "api-test", interval=0.05)
        stop = threading.Event()
        thread = threading.Thread(target=d.run, args=(lambda: True, stop), daemon=True)
        thread.start()
        try:
            api.worker("node-1", max_jobs=50)
            started = time.monotonic()
            for _ in range(20):
                job = submit(api.admin, command="true", notify=[{"on": ["done"], "target": "good"}])
                api.finish(job["id"])
            flowing = time.monotonic() - started
            assert len(hook.wait(20, timeout=10)) == 20  # the good target got all of them
            assert time.monotonic() - started < 10  # long before the never-answering one times out
            assert flowing < 5
        finally:
            stop.set()
            thread.join(timeout=5)


def test_a_dead_targets_backlog_does_not_starve_the_others(api: Api, engine: sa.Engine) -> None:
    with silent_server() as never, webhook() as hook:
        with db.write(engine) as conn:
            dead = notify.create_target(conn, "never", "webhook", url=never)
            good = notify.create_target(conn, "good", "webhook", url=hook.url)
            specs = [
                jobs.Spec(
                    worker_class_id=1,
                    command="true",
                    notify=({"on": ["killed"], "target": dead.id},),
                )
                for _ in range(250)
            ]
            specs.append(
                jobs.Spec(
                    worker_class_id=1,
                    command="true",
                    notify=({"on": ["killed"], "target": good.id},),
                )
            )
            for job_id in jobs.create(conn, specs, None, None):
                jobs.request_kill(conn, job_id)
        d = notify.Dispatcher(engine, api.app.state.settings, "api-test")
        d.dispatch()  # the oldest 200 are the dead target's: its lane fills up
        d.dispatch()  # the next look leaves that lane out
        [got] = hook.wait(1, timeout=5)
        assert got.body["state"] == "killed"
        d.active = False  # the dead lane drops what it holds
