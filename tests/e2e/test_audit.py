"""`jobbalancer audit` against a real server: what the CLI and the API changed, who did it
and how, filtered by user, action and time; and `keys create --scope --expires`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

from tests.e2e.conftest import Cluster

Factory = Callable[..., Cluster]


def _cli(cluster: Cluster, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**cluster.env, "JOBBALANCER_URL": cluster.url,
           "JOBBALANCER_API_KEY": key or cluster.key, "COLUMNS": "200"}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "jobbalancer", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_cli_audit_lists_who_changed_what(make_cluster: Factory) -> None:
    cluster: Cluster = make_cluster()
    # A local command (straight on the database) makes alice and a scoped, expiring key.
    made = _cli(cluster, "users", "create", "alice", "--role", "operator")
    assert made.returncode == 0, made.stderr
    key = _cli(cluster, "keys", "create", "ci", "--user", "alice", "--scope", "submit",
               "--expires", "30d")  # fmt: skip
    assert key.returncode == 0, key.stderr
    assert "scope submit" in key.stdout and "expires" in key.stdout
    alice_key = key.stdout.strip().splitlines()[-1]
    # alice submits through the CLI; her submit key may not kill the admin's job
    job = cluster.submit(command="sleep 30")
    sub = _cli(cluster, "submit", "--", "true", key=alice_key)
    assert sub.returncode == 0, sub.stderr
    assert _cli(cluster, "kill", str(job["id"]), key=alice_key).returncode != 0
    assert _cli(cluster, "kill", str(job["id"])).returncode == 0

    everything = _cli(cluster, "audit", "--since", "1h", "--json")
    assert everything.returncode == 0, everything.stderr
    entries = json.loads(everything.stdout)
    actions = [(e["actor_name"], e["action"]) for e in entries]
    assert actions[:3] == [("tester", "job.kill"), ("alice", "job.submit"),
                           ("tester", "job.submit")]  # fmt: skip
    assert ("local", "user.create") in actions and ("local", "key.create") in actions
    local = next(e for e in entries if e["action"] == "key.create")
    assert local["via"] == "cli" and "scope submit" in local["summary"]
    alices = next(e for e in entries if e["actor_name"] == "alice")
    assert alices["via"] == f"key {alice_key[:11]}" and alices["address"] == "127.0.0.1"

    table = _cli(cluster, "audit", "--since", "1h", "--user", "alice")
    assert table.returncode == 0, table.stderr
    assert "job.submit" in table.stdout and "job.kill" not in table.stdout
    kills = _cli(cluster, "audit", "--action", "job.kill", "--json")
    assert [e["object_id"] for e in json.loads(kills.stdout)] == [job["id"]]
    assert "no audit entries match" in _cli(cluster, "audit", "--until", "1h").stdout
    # who changed the backup script: the whole diff with --full
    made = subprocess.run(
        [sys.executable, "-m", "jobbalancer", "scripts", "create", "backup", "-", "-i", "sh"],
        input="echo one\n", env={**cluster.env, "JOBBALANCER_URL": cluster.url,
                                 "JOBBALANCER_API_KEY": cluster.key},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    edit = subprocess.run(
        [sys.executable, "-m", "jobbalancer", "scripts", "edit", "backup", "--file", "-"],
        input="echo two\n", env={**cluster.env, "JOBBALANCER_URL": cluster.url,
                                 "JOBBALANCER_API_KEY": cluster.key},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert edit.returncode == 0, edit.stderr
    diff = _cli(cluster, "audit", "--object", "script:backup", "--action", "script.update",
                "--full")  # fmt: skip
    assert "-echo one" in diff.stdout and "+echo two" in diff.stdout, diff.stdout
    short = _cli(cluster, "audit", "--object", "script:backup", "--action", "script.update")
    assert "+echo two" not in short.stdout and "…" in short.stdout
    # alice's submit key is no admin's: the log is not hers to read
    refused = _cli(cluster, "audit", key=alice_key)
    assert refused.returncode != 0 and "admins only" in refused.stderr + refused.stdout
