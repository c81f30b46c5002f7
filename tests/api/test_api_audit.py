"""``GET /api/v1/audit`` (admins: filters, cursor pages) and scoped, expiring API keys
through the API: a scope never above the role (422), min(scope, role) per request, an
expired key refused with a 401 that says so, last_used_at shown."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from apihelpers import Api

from jobbalancer import db
from jobbalancer.db import schema


def _key(api: Api, user_id: int, **body: object) -> dict[str, object]:
    r = api.admin.post(f"/api/v1/users/{user_id}/api-keys", json={"name": "k", **body})
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_the_log_lists_changes_newest_first_with_who_how_and_where(api: Api) -> None:
    alice_id, alice_key = api.user("alice", "operator")
    alice = api.client(alice_key)
    job = alice.post("/api/v1/jobs", json={"command": "sleep 1"}).json()
    assert alice.post(f"/api/v1/jobs/{job['id']}/kill").status_code == 202
    r = api.admin.get("/api/v1/audit")
    assert r.status_code == 200, r.text
    kill, submit = r.json()["items"][:2]
    assert kill["action"] == "job.kill" and submit["action"] == "job.submit"
    assert kill["actor_id"] == alice_id and kill["actor_name"] == "alice"
    assert kill["via"] == f"key {alice_key[:11]}" and kill["address"] == "testclient"
    assert (kill["object_type"], kill["object_id"]) == ("job", job["id"])
    assert kill["object_name"] == "sleep 1" and submit["count"] == 1
    assert kill["at"].endswith("Z")


def test_only_admins_read_the_log(api: Api) -> None:
    for role in ("operator", "submitter", "viewer"):
        _, key = api.user(f"u_{role}", role)
        assert api.client(key).get("/api/v1/audit").status_code == 403
    assert api.client().get("/api/v1/audit").status_code == 401


def test_filters_by_actor_action_object_and_time(api: Api) -> None:
    _, a_key = api.user("ann", "operator")
    _, b_key = api.user("ben", "operator")
    ann, ben = api.client(a_key), api.client(b_key)
    job = ann.post("/api/v1/jobs", json={"command": "true"}).json()["id"]
    ben.post("/api/v1/jobs", json={"command": "true"})
    ben.post(f"/api/v1/jobs/{job}/kill")
    ann.post("/api/v1/scripts", json={"name": "backup", "interpreter": "sh", "content": "x"})

    def actions(**params: str) -> list[str]:
        r = api.admin.get("/api/v1/audit", params=params)
        assert r.status_code == 200, r.text
        return [e["action"] for e in r.json()["items"]]

    assert actions(actor="ann") == ["script.create", "job.submit"]
    assert actions(actor="ben", action="job.kill") == ["job.kill"]
    assert actions(action="job") == ["job.kill", "job.submit", "job.submit"]
    assert actions(object=f"job:{job}") == ["job.kill", "job.submit"]
    assert actions(object="script:backup") == ["script.create"]
    assert actions(object="script") == ["script.create"]
    assert len(actions(since="1h")) == 4 and actions(until="1h") == []
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert actions(since=future) == []
    r = api.admin.get("/api/v1/audit", params={"since": "yesterday-ish"})
    assert r.status_code == 422 and r.json()["field"] == "since"
    r = api.admin.get("/api/v1/audit", params={"cursor": "nonsense"})
    assert r.status_code == 422 and r.json()["field"] == "cursor"


def test_pages_follow_the_cursor_without_gaps_or_repeats(api: Api) -> None:
    for i in range(7):
        api.admin.post("/api/v1/worker-classes", json={"name": f"c{i}"})
    seen: list[int] = []
    cursor = None
    for _ in range(10):
        params = {"limit": "3", "action": "class.create"} | ({"cursor": cursor} if cursor else {})
        body = api.admin.get("/api/v1/audit", params=params).json()
        seen += [e["id"] for e in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 7 and seen == sorted(seen, reverse=True)


def test_a_key_gets_a_scope_and_an_expiry(api: Api) -> None:
    sam_id, _ = api.user("sam", "submitter")
    made = _key(api, sam_id, scope="submit", expires_at="2099-03-01T00:00:00Z")
    assert made["scope"] == "submit" and made["expires_at"] == "2099-03-01T00:00:00.000Z"
    default = _key(api, sam_id)
    assert default["scope"] == "submit"  # the user's role's
    listed = api.admin.get(f"/api/v1/users/{sam_id}/api-keys").json()
    assert {k["scope"] for k in listed} == {"submit"}
    assert all("last_used_at" in k and "expires_at" in k for k in listed)


def test_a_scope_above_the_users_role_is_refused(api: Api) -> None:
    viewer_id, _ = api.user("vic", "viewer")
    for scope in ("submit", "operate", "admin"):
        r = api.admin.post(f"/api/v1/users/{viewer_id}/api-keys", json={"scope": scope})
        assert r.status_code == 422 and r.json()["field"] == "scope", r.text
    r = api.admin.post(f"/api/v1/users/{viewer_id}/api-keys", json={"scope": "root"})
    assert r.status_code == 422 and "scope" in r.json()["field"]
    r = api.admin.post(f"/api/v1/users/{viewer_id}/api-keys", json={"expires_at": "2001-01-01"})
    assert r.status_code == 422 and r.json()["field"] == "expires_at"
    r = api.admin.post(f"/api/v1/users/{viewer_id}/api-keys", json={"expires_at": "soon"})
    assert r.status_code == 422 and "expires_at" in r.json()["field"]


def test_a_key_may_not_make_a_key_above_its_own_scope(api: Api) -> None:
    boss_id, _ = api.user("boss", "admin")
    ci = api.client(str(_key(api, boss_id, scope="submit")["key"]))
    r = ci.post(f"/api/v1/users/{boss_id}/api-keys", json={"scope": "admin"})
    assert r.status_code == 422 and r.json()["field"] == "scope"
    r = ci.post(f"/api/v1/users/{boss_id}/api-keys", json={})
    assert r.status_code == 201 and r.json()["scope"] == "submit"


def test_rights_are_the_lesser_of_scope_and_role_at_each_request(api: Api) -> None:
    olga_id, _ = api.user("olga", "operator")
    others = api.admin.post("/api/v1/jobs", json={"command": "true"}).json()["id"]
    submit = api.client(str(_key(api, olga_id, scope="submit")["key"]))
    operate = api.client(str(_key(api, olga_id, scope="operate")["key"]))
    read = api.client(str(_key(api, olga_id, scope="read")["key"]))
    assert submit.post("/api/v1/jobs", json={"command": "true"}).status_code == 201
    # a submitter's rights: another's job does not exist for it
    assert submit.post(f"/api/v1/jobs/{others}/kill").status_code == 404
    assert read.post("/api/v1/jobs", json={"command": "true"}).status_code == 403
    assert "scope read" in read.post("/api/v1/jobs", json={}).json()["message"]
    assert read.get(f"/api/v1/jobs/{others}").status_code == 200
    assert operate.post(f"/api/v1/jobs/{others}/kill").status_code == 202
    # Demoted: every key of hers has at most a submitter's rights, at once.
    api.admin.patch(f"/api/v1/users/{olga_id}", json={"role": "submitter"})
    again = api.admin.post("/api/v1/jobs", json={"command": "true"}).json()["id"]
    assert operate.post(f"/api/v1/jobs/{again}/kill").status_code == 404
    assert operate.get("/api/v1/me").json()["role"] == "submitter"


def test_a_submitters_read_key_sees_only_their_own_jobs(api: Api) -> None:
    # A viewer reads every job, a submitter only theirs: a scope narrows what a key may
    # do, never widens what it may see.
    sam_id, sam = api.user("sam", "submitter")
    others = api.admin.post("/api/v1/jobs", json={"command": "true"}).json()["id"]
    own = api.client(sam).post("/api/v1/jobs", json={"command": "true"}).json()["id"]
    read = api.client(str(_key(api, sam_id, scope="read")["key"]))
    assert read.get(f"/api/v1/jobs/{others}").status_code == 404
    assert read.get(f"/api/v1/jobs/{own}").status_code == 200
    assert [j["id"] for j in read.get("/api/v1/jobs").json()["items"]] == [own]
    assert read.post("/api/v1/jobs", json={"command": "true"}).status_code == 403
    assert read.post(f"/api/v1/jobs/{own}/kill").status_code == 403


def test_an_expired_key_gets_a_401_that_says_so(api: Api) -> None:
    eve_id, _ = api.user("eve", "submitter")
    made = _key(api, eve_id, expires_at=(datetime.now(UTC) + timedelta(days=1)).isoformat())
    eve = api.client(str(made["key"]))
    assert eve.get("/api/v1/me").status_code == 200
    with db.write(api.engine) as conn:
        k = schema.api_keys
        past = db.now(conn) - timedelta(seconds=1)
        conn.execute(sa.update(k).where(k.c.id == made["id"]).values(expires_at=past))
    api.app.state.key_cache = None  # what the cache remembered for 2 s
    r = eve.get("/api/v1/me")
    assert r.status_code == 401 and "expired" in r.json()["message"], r.text
    r = api.client().post("/addJob", json={"command": "true", "apiKey": made["key"]})
    assert r.status_code == 401 and "expired" in r.json()["message"]


def test_last_used_at_is_stamped_and_shown(api: Api) -> None:
    fay_id, key = api.user("fay", "submitter")
    [before] = api.admin.get(f"/api/v1/users/{fay_id}/api-keys").json()
    assert before["last_used_at"] is None
    assert api.client(key).get("/api/v1/me").status_code == 200
    [after] = api.admin.get(f"/api/v1/users/{fay_id}/api-keys").json()
    assert after["last_used_at"] is not None
