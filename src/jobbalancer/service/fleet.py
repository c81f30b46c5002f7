"""Changes to the fleet: workers, worker classes and stored scripts (operators and
admins), and the cluster-wide settings (admins). A change that frees slots (more max_jobs,
another class, enabled again) fills them in the same transaction, so waiting jobs do not
wait for the balancer's next pass."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from jobbalancer import audit, auth, balancer, classes, db, notify, registry, scripts, settings
from jobbalancer.service import access, inputs


def update_worker(
    engine: sa.Engine, user: auth.User, worker_id: int, changes: dict[str, Any]
) -> registry.Worker:
    """Change max_jobs, worker_class (a name or id) or enabled; the worker as it is now."""
    access.require(user, access.OPERATE)
    with db.write(engine) as conn:
        before = registry.get(conn, worker_id)
        if "worker_class" in changes:
            changes = {**changes, "worker_class": classes.find(conn, changes["worker_class"]).id}
        registry.update(conn, worker_id, changes)
        # More slots, another class, or enabled again: waiting jobs may fit now.
        balancer.assign_waiting(conn, worker_id=worker_id)
        after = registry.get(conn, worker_id)
        action = "worker.update"
        if set(changes) == {"enabled"}:
            action = "worker.enable" if after.enabled else "worker.disable"
        audit.record(conn, user, action, "worker", worker_id, after.name,
                     audit.changes(_worker(before), _worker(after)) or "no change")  # fmt: skip
        return after


def _worker(w: registry.Worker) -> dict[str, Any]:
    return {"enabled": w.enabled, "worker_class": w.worker_class, "max_jobs": w.own_max_jobs}


def remove_worker(engine: sa.Engine, user: auth.User, worker_id: int) -> registry.Worker:
    """Remove an offline worker from the list (Conflict while it is online or draining)."""
    access.require(user, access.OPERATE)
    with db.write(engine) as conn:
        worker = registry.get(conn, worker_id)
        registry.delete(conn, worker_id)
        audit.record(conn, user, "worker.remove", "worker", worker_id, worker.name,
                     f"host {worker.host}; class {worker.worker_class}")  # fmt: skip
    return worker


def create_class(
    engine: sa.Engine, user: auth.User, spec: inputs.WorkerClassIn
) -> classes.WorkerClass:
    access.require(user, access.OPERATE)
    with db.write(engine) as conn:
        requests = spec.requests.stored() if spec.requests else None
        made = classes.create(conn, spec.name, spec.max_jobs, spec.description, requests=requests)
        summary = audit.fields(_class(made))
        audit.record(conn, user, "class.create", "class", made.id, made.name, summary)
        return made


def _class(c: classes.WorkerClass) -> dict[str, Any]:
    return {"name": c.name, "max_jobs": c.max_jobs, "description": c.description,
            "requests": _requests(c.requests)}  # fmt: skip


def _requests(requests: Mapping[str, Any] | None) -> str | None:
    """Placement requests as one short line (``cpu=2, memory_mb=512``); None: nothing."""
    shown = [f"{k}={v}" for k, v in sorted((requests or {}).items()) if v is not None]
    return ", ".join(shown) or None


def update_class(
    engine: sa.Engine, user: auth.User, class_id: int, changes: dict[str, Any]
) -> tuple[classes.WorkerClass, classes.WorkerClass]:
    """Rename, change max_jobs or the description; the class before and after."""
    access.require(user, access.OPERATE)
    with db.write(engine) as conn:
        before = classes.get(conn, class_id)
        updated = classes.update(conn, class_id, changes)
        # A higher max_jobs frees slots on the class's workers at once.
        balancer.assign_waiting(conn, class_ids=[class_id])
        audit.record(conn, user, "class.update", "class", class_id, updated.name,
                     audit.changes(_class(before), _class(updated)))  # fmt: skip
    return before, updated


def delete_class(engine: sa.Engine, user: auth.User, class_id: int) -> classes.WorkerClass:
    """Delete a class without workers and unfinished jobs (Conflict says what holds it)."""
    access.require(user, access.OPERATE)
    with db.write(engine) as conn:
        wclass = classes.get(conn, class_id)
        classes.delete(conn, class_id)
        notify.delete_class_rules(conn, class_id)
        audit.record(conn, user, "class.delete", "class", class_id, wclass.name,
                     audit.fields(_class(wclass)))  # fmt: skip
    return wclass


def create_script(engine: sa.Engine, user: auth.User, spec: inputs.ScriptIn) -> scripts.Script:
    """Store a script. Jobs copy it when submitted, so later edits never change them."""
    access.require(user, access.OPERATE)
    with db.write(engine) as conn:
        made = scripts.create(
            conn,
            spec.name,
            spec.interpreter,
            spec.content,
            spec.description,
            parameters=_declared(spec.parameters),
            requests=spec.requests.stored() if spec.requests else None,
        )
        summary = audit.fields(_script(made)) + "\n" + audit.diff("", made.content, made.name)
        if made.parameters:
            summary += audit.diff("", _declaration(made), f"{made.name} parameters")
        audit.record(conn, user, "script.create", "script", made.id, made.name, summary)
        return made


def _script(s: scripts.Script) -> dict[str, Any]:
    """What an audit entry says of a script besides its content: its parameters by name
    (a default may be a secret's name; declarations are on the script's page)."""
    return {"name": s.name, "interpreter": s.interpreter, "description": s.description,
            "parameters": [p.name for p in s.parameters],
            "requests": _requests(s.requests)}  # fmt: skip


def _declaration(s: scripts.Script) -> str:
    """A script's parameter declaration as text, one parameter a line, so that an edit's
    entry shows a diff of it (a rule, a default or a help text changed)."""
    return "".join(json.dumps(p.to_json(), sort_keys=True) + "\n" for p in s.parameters)


def update_script(
    engine: sa.Engine, user: auth.User, script_id: int, changes: dict[str, Any]
) -> scripts.Script:
    access.require(user, access.OPERATE)
    if isinstance(changes.get("parameters"), list):  # models from a ScriptPatch, or JSON
        changes = {**changes, "parameters": _declared(changes["parameters"])}
    with db.write(engine) as conn:
        before = scripts.get(conn, script_id)
        after = scripts.update(conn, script_id, changes)
        summary = audit.changes(_script(before), _script(after))
        if after.content != before.content:
            text = audit.diff(before.content, after.content, after.name)
            summary += ("\n" if summary else "") + text
        if _declaration(before) != _declaration(after):
            text = audit.diff(_declaration(before), _declaration(after), f"{after.name} parameters")
            summary += ("\n" if summary else "") + text
        audit.record(conn, user, "script.update", "script", script_id, after.name, summary)
        return after


def _declared(parameters: list[Any] | None) -> list[Any] | None:
    """A declaration as scripts take it: plain objects with the keys given."""
    if parameters is None:
        return None
    return [p.declared() if isinstance(p, inputs.ParameterIn) else p for p in parameters]


def delete_script(engine: sa.Engine, user: auth.User, script_id: int) -> scripts.Script:
    """Delete a script (jobs that ran it keep their copy); the script as it was."""
    access.require(user, access.OPERATE)
    with db.write(engine) as conn:
        script = scripts.get(conn, script_id)
        scripts.delete(conn, script_id)
        summary = audit.fields(_script(script)) + "\n" + audit.diff(script.content, "", script.name)
        audit.record(conn, user, "script.delete", "script", script_id, script.name, summary)
    return script


def save_settings(engine: sa.Engine, user: auth.User, changes: dict[str, Any]) -> settings.Tunables:
    """Change some settings; they take effect at once on every server and worker."""
    access.require(user, access.ADMIN)
    with db.write(engine) as conn:
        before = settings.load_tunables(conn)
        after = settings.save_tunables(conn, changes)
        summary = audit.changes(before.model_dump(), after.model_dump()) or "no change"
        audit.record(conn, user, "setting.update", "settings", None, None, summary)
        return after
