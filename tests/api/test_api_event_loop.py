"""The API's async dependencies and routes (who is asking, POST /api/v1/jobs, /addJob)
send every database statement to a thread: one on the event loop stalls every request."""

from __future__ import annotations

from apihelpers import Api
from tests.event_loop import sql_on_event_loop

from jobbalancer import auth, db


def test_submitting_and_authenticating_run_no_statement_on_the_event_loop(api: Api) -> None:
    api.worker("w1", max_jobs=1)
    sam_id, sam_key = api.user("sam")
    sam = api.client(sam_key)
    with db.write(api.engine) as conn:
        token, session = auth.create_session(conn, sam_id)
    browser = api.client(**{auth.CSRF_HEADER: session.csrf_token})
    browser.cookies.set(auth.SESSION_COOKIE, token)

    with sql_on_event_loop(api.engine) as stalls:
        assert sam.get("/api/v1/me").status_code == 200  # a key not seen yet, its use stamped
        assert sam.post("/api/v1/jobs", json={"command": "true"}).status_code == 201
        busy = {"command": "true", "need_realtime": True}
        assert sam.post("/api/v1/jobs", json=busy).status_code == 409
        assert sam.post("/api/v1/jobs", json={"command": 5}).status_code == 422
        assert api.client("jb_nobody").post("/api/v1/jobs", json={}).status_code == 401
        assert browser.post("/api/v1/jobs", json={"command": "true"}).status_code == 201
        legacy = {"apiKey": sam_key, "command": "true"}
        assert api.client().post("/addJob", json=legacy).json()["result"] is True
        assert api.client().post("/addJob", json={"apiKey": "jb_x"}).status_code == 401

    assert stalls == []
