"""``/scripts``: the stored scripts, and ``/scripts/{id}``: one in an editor with syntax
highlighting for its interpreter (CodeMirror 5, vendored; wired up by
``static/scripts.js``), where operators save, rename and delete it, and anyone who may
submit runs it with parameters typed into the page.

Saving reads the form as the API's body (``inputs.ScriptIn``/``ScriptPatch``) and running
it as an ``inputs.JobSubmit``, so the rules and messages are the API's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Path
from fastapi.responses import Response

from jobbalancer import classes, db, errors, jobs, scriptparams, scripts
from jobbalancer.refs import MAX_ID
from jobbalancer.service import fleet, inputs, submission
from jobbalancer.service import secrets as secret_service
from jobbalancer.web import deps, pages

router = APIRouter(include_in_schema=False)

ScriptId = Annotated[int, Path(ge=1, le=MAX_ID)]
# The picker's choices; anything else is a program name or path typed in ("custom").
INTERPRETERS = ("sh", "bash", "python3", "node", "php", "perl", "ruby")
SHEBANG = "shebang"  # the picker's value for "the script's own #! line"
CUSTOM = "custom"
NEW_SCRIPT = (
    "#!/bin/sh\n"
    "# $1, $2, ... are the parameters given when the job is submitted.\n"
    'echo "hello, ${1:-world}"\n'
)


@dataclass(frozen=True)
class ScriptForm:
    """The editor's fields as the page sends them back."""

    name: str = ""
    choice: str = SHEBANG
    custom: str = ""
    content: str = NEW_SCRIPT
    description: str = ""
    parameters: str = ""  # the declaration as JSON text; empty: none

    @classmethod
    def of(cls, script: scripts.Script) -> ScriptForm:
        interpreter = script.interpreter or ""
        if not interpreter:
            choice, custom = SHEBANG, ""
        elif interpreter in INTERPRETERS:
            choice, custom = interpreter, ""
        else:
            choice, custom = CUSTOM, interpreter
        declared = [p.to_json() for p in script.parameters]
        parameters = json.dumps(declared, indent=2, ensure_ascii=False) if declared else ""
        return cls(script.name, choice, custom, script.content, script.description, parameters)

    @classmethod
    def read(cls, page: deps.Page) -> ScriptForm:
        return cls(
            name=page.field("name"),
            choice=page.field("interpreter_choice", SHEBANG),
            custom=page.field("interpreter_path"),
            # Browsers send CRLF line ends from a textarea; scripts want LF.
            content=page.field("content").replace("\r\n", "\n"),
            description=page.field("description"),
            parameters=page.field("parameters").replace("\r\n", "\n"),
        )

    @property
    def interpreter(self) -> str | None:
        if self.choice == SHEBANG:
            return None
        return self.custom.strip() if self.choice == CUSTOM else self.choice

    def body(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "interpreter": self.interpreter,
            "content": self.content,
            "description": self.description,
            "parameters": self.declared(),
        }

    def declared(self) -> Any:
        """The parameters text as JSON (blank: none); InvalidInput saying where it breaks."""
        if not self.parameters.strip():
            return []
        try:
            return json.loads(self.parameters)
        except ValueError as exc:
            raise errors.InvalidInput(
                f"parameters: not valid JSON ({exc})", field="parameters"
            ) from None


# -- the list -------------------------------------------------------------------------------


@router.get("/scripts")
def scripts_page(page: deps.Viewer) -> Response:
    with db.read(page.engine) as conn:
        found = scripts.list_all(conn)
    return page.render("scripts.html", active="scripts", scripts=found)


# -- the editor -----------------------------------------------------------------------------


@router.get("/scripts/new")
def new_script(page: deps.Operator) -> Response:
    return _render_editor(page, None, ScriptForm())


@router.post("/scripts")
def create_script(page: deps.Operator) -> Response:
    form = ScriptForm.read(page)
    try:
        spec = inputs.ScriptIn.model_validate(form.body())
        created = fleet.create_script(page.engine, page.user, spec)
    except pydantic.ValidationError as exc:
        field, message = inputs.describe(exc.errors()[0])
        return _render_editor(page, None, form, error=message, error_field=field, status=422)
    except errors.JobBalancerError as exc:
        return _render_editor(
            page, None, form, error=exc.message, error_field=exc.field, status=exc.status
        )
    return pages.redirect(f"/scripts/{created.id}", f"Script {created.name} saved.")


@router.get("/scripts/{script_id}")
def script_page(script_id: ScriptId, page: deps.Viewer) -> Response:
    with db.read(page.engine) as conn:
        script = scripts.get(conn, script_id)
    return _render_editor(page, script, ScriptForm.of(script))


@router.post("/scripts/{script_id}")
def save_script(script_id: ScriptId, page: deps.Operator) -> Response:
    """Save the editor: name (a rename), interpreter, body and description."""
    form = ScriptForm.read(page)
    with db.read(page.engine) as conn:
        script = scripts.get(conn, script_id)
    try:
        patch = inputs.ScriptPatch.model_validate(form.body())
        saved = fleet.update_script(page.engine, page.user, script_id, patch.model_dump())
    except pydantic.ValidationError as exc:
        field, message = inputs.describe(exc.errors()[0])
        return _render_editor(page, script, form, error=message, error_field=field, status=422)
    except errors.JobBalancerError as exc:
        return _render_editor(
            page, script, form, error=exc.message, error_field=exc.field, status=exc.status
        )
    renamed = f" (renamed from {script.name})" if saved.name != script.name else ""
    return pages.redirect(f"/scripts/{script_id}", f"Script {saved.name} saved{renamed}.")


@router.post("/scripts/{script_id}/delete")
def delete_script(script_id: ScriptId, page: deps.Operator) -> Response:
    name = fleet.delete_script(page.engine, page.user, script_id).name
    return pages.redirect("/scripts", f"Script {name} deleted; jobs that ran it keep their copy.")


def _render_editor(
    page: deps.Page,
    script: scripts.Script | None,
    form: ScriptForm,
    *,
    error: str | None = None,
    error_field: str | None = None,
    run: dict[str, str] | None = None,
    run_error: str | None = None,
    param_errors: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    with db.read(page.engine) as conn:
        found = classes.list_all(conn)
    return page.render(
        "script.html",
        active="scripts",
        status=status,
        script=script,
        form=form,
        interpreters=INTERPRETERS,
        shebang=SHEBANG,
        custom=CUSTOM,
        classes=[c for c in found if page.user.may_use_class(c.name)],
        error=error,
        # A declaration's error is shown under its textarea too.
        parameters_error=error if (error_field or "").startswith("parameters") else None,
        run=run or {"params": "", "worker_class": classes.DEFAULT, "watchdog": ""},
        run_error=run_error,
        param_errors=param_errors or {},
        fields=_fields(script, run, _usable_secrets(page, script)),
    )


def _usable_secrets(page: deps.Page, script: scripts.Script | None) -> list[str]:
    """The names of the secrets the user's jobs may use (a ``secret`` parameter's
    choices), read only for a script that declares one."""
    if script is None or not any(p.type == "secret" for p in script.parameters):
        return []
    found = secret_service.list_secrets(page.engine, page.user)
    return [s.name for s in found if s.allows_user(page.user.id)]


# -- running it -----------------------------------------------------------------------------


@router.post("/scripts/{script_id}/run")
def run_script(script_id: ScriptId, page: deps.Submitter) -> Response:
    """Submit a job running the stored script: its declared parameters from the form's
    fields (checked by the server, an error shown next to its field), or for a script that
    declares none the parameters typed into the page, one a line."""
    run = {n: page.field(n) for n in ("params", "worker_class", "watchdog")}
    with db.read(page.engine) as conn:
        script = scripts.get(conn, script_id)
    params: list[str] | dict[str, str]
    if script.parameters:
        params = _typed_values(page, script)
        run |= {f"{PARAM_FIELD}{name}": value for name, value in params.items()}
    else:
        params = [p for p in run["params"].replace("\r\n", "\n").split("\n") if p]
    body: dict[str, Any] = {
        "script": script.id,
        "params": params,
        "worker_class": run["worker_class"].strip() or classes.DEFAULT,
    }
    if run["watchdog"].strip():
        body["watchdog"] = run["watchdog"].strip()
    field: str | None = None
    try:
        spec = inputs.JobSubmit.model_validate(body)
        limiter = submission.rate_limiter(page.request.app.state)
        [job] = submission.submit(page.engine, page.user, [spec], prefix=False, limiter=limiter)
    except pydantic.ValidationError as exc:
        field, message = inputs.describe(exc.errors()[0])
    except errors.JobBalancerError as exc:
        field, message = exc.field, exc.message
    else:
        if job.state == jobs.State.OCCUPIED:  # not possible without need_realtime; say so
            return pages.redirect(f"/jobs/{job.id}", f"Job {job.id} was not run.", error=True)
        return pages.redirect(f"/jobs/{job.id}", f"Job {job.id} submitted: script {script.name}.")
    name = (field or "").removeprefix("params.")
    if script.parameters and name in {p.name for p in script.parameters}:
        return _render_editor(
            page, script, ScriptForm.of(script), run=run, param_errors={name: message},
            run_error="The job was not submitted: see the parameters marked below.",
            status=422,
        )  # fmt: skip
    return _render_editor(
        page, script, ScriptForm.of(script), run=run, run_error=message, status=422
    )


# The Run form's field of a declared parameter: "param.crf".
PARAM_FIELD = "param."


def _typed_values(page: deps.Page, script: scripts.Script) -> dict[str, str]:
    """The declared parameters' values as the form sent them: a checkbox is "true" when
    ticked, else "false"; an empty field is not given (the default applies)."""
    values = {}
    for p in script.parameters:
        if p.type == "bool":
            values[p.name] = "true" if page.field(PARAM_FIELD + p.name) else "false"
        else:
            values[p.name] = page.field(PARAM_FIELD + p.name)
    return values


@dataclass(frozen=True)
class ParamField:
    """One declared parameter as the Run form shows it."""

    param: scriptparams.Param
    value: str  # what the field holds (the default, or what was sent)
    input_type: str  # text, number, checkbox, select
    step: str = ""
    pattern: str = ""
    choices: tuple[str, ...] = ()  # a select's values: a choice's, or the usable secrets

    @property
    def name(self) -> str:
        return PARAM_FIELD + self.param.name


def _fields(
    script: scripts.Script | None, run: dict[str, str] | None, secrets: Sequence[str] = ()
) -> list[ParamField]:
    """The Run form's fields; a ``secret`` parameter is a select of ``secrets`` (the ones
    the user may use; the value sent or the default is kept among them)."""
    if script is None:
        return []
    found = []
    for p in script.parameters:
        sent = (run or {}).get(PARAM_FIELD + p.name)
        value = sent if sent is not None else "" if p.default is None else (
            scriptparams.argv_form(p.default)
        )  # fmt: skip
        kind, step, pattern, choices = "text", "", "", p.values
        if p.type in ("int", "float"):
            kind, step = "number", "1" if p.type == "int" else "any"
        elif p.type == "bool":
            kind = "checkbox"
        elif p.type == "choice":
            kind = "select"
        elif p.type == "secret":
            kind = "select"
            choices = tuple(secrets) + ((value,) if value and value not in secrets else ())
        elif p.regex is not None:
            pattern = p.regex
        found.append(ParamField(p, value, kind, step, pattern, choices))
    return found
