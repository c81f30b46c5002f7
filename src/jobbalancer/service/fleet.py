"""Changes to the fleet: workers, worker classes and stored scripts (operators and
admins), and the cluster-wide settings (admins). A change that frees slots (more max_jobs,
another class, enabled again) fills them in the same transaction, so waiting jobs do not
wait for the balancer's next pass."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from jobbalancer import auth, balancer, classes, db, notify, registry, scripts, settings
from jobbalancer.service import access, inputs


def update_worker(
    engine: sa.Engine, user: auth.User, worker_id: int, changes: dict[str, Any]
) -> registry.Worker:
    """Change max_jobs, worker_class (a name or id) or enabled; the worker as it is now."""
    access.require(user, access.OPERATE)
    with db.write(engine) as conn:
        if "worker_class" in changes:
            changes = {**changes, "worker_class": classes.find(conn, changes["worker_class"]).id}
        registry.update(conn, worker_id, changes)
        # More slots, another class, or enabled again: waiting jobs may fit now.
        balancer.assign_waiting(conn, worker_id=worker_id)
        return registry.get(conn, worker_id)


def remove_worker(engine: sa.Engine, user: auth.User, worker_id: int) -> registry.Worker:
    """Remove an offline worker from the list (Conflict while it is online or draining)."""
    access.require(user, access.OPERATE)
    with db.write(engine) as conn:
        worker = registry.get(conn, worker_id)
        registry.delete(conn, worker_id)
    return worker


def create_class(
    engine: sa.Engine, user: auth.User, spec: inputs.WorkerClassIn
) -> classes.WorkerClass:
    access.require(user, access.OPERATE)
    with db.write(engine) as conn:
        requests = spec.requests.stored() if spec.requests else None
        return classes.create(conn, spec.name, spec.max_jobs, spec.description, requests=requests)


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
    return before, updated


def delete_class(engine: sa.Engine, user: auth.User, class_id: int) -> classes.WorkerClass:
    """Delete a class without workers and unfinished jobs (Conflict says what holds it)."""
    access.require(user, access.OPERATE)
    with db.write(engine) as conn:
        wclass = classes.get(conn, class_id)
        classes.delete(conn, class_id)
        notify.delete_class_rules(conn, class_id)
    return wclass


def create_script(engine: sa.Engine, user: auth.User, spec: inputs.ScriptIn) -> scripts.Script:
    """Store a script. Jobs copy it when submitted, so later edits never change them."""
    access.require(user, access.OPERATE)
    with db.write(engine) as conn:
        return scripts.create(
            conn,
            spec.name,
            spec.interpreter,
            spec.content,
            spec.description,
            parameters=_declared(spec.parameters),
            requests=spec.requests.stored() if spec.requests else None,
        )


def update_script(
    engine: sa.Engine, user: auth.User, script_id: int, changes: dict[str, Any]
) -> scripts.Script:
    access.require(user, access.OPERATE)
    if isinstance(changes.get("parameters"), list):  # models from a ScriptPatch, or JSON
        changes = {**changes, "parameters": _declared(changes["parameters"])}
    with db.write(engine) as conn:
        return scripts.update(conn, script_id, changes)


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
    return script


def save_settings(engine: sa.Engine, user: auth.User, changes: dict[str, Any]) -> settings.Tunables:
    """Change some settings; they take effect at once on every server and worker."""
    access.require(user, access.ADMIN)
    with db.write(engine) as conn:
        return settings.save_tunables(conn, changes)
