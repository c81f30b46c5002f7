"""``jobbalancer scripts list|show|create|edit``: stored scripts and the parameters they
declare, through a server's API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from jobbalancer.cli import exits, formatting
from jobbalancer.cli.base import JsonOpt, Remote, app, opt, server_options

scripts_app = typer.Typer(
    help="Stored scripts: list them, show one with its parameters, create, edit.",
    no_args_is_help=True,
)
app.add_typer(scripts_app, name="scripts")

ScriptArg = Annotated[str, typer.Argument(help="The script's name or id.")]
InterpreterOpt = Annotated[
    str | None,
    opt(
        "--interpreter",
        "-i",
        env="SCRIPT_INTERPRETER",
        help="Program name (sh, python3) or absolute path; empty: the body's #! line.",
    ),
]
DescriptionOpt = Annotated[
    str | None, opt("--description", "-d", env="SCRIPT_DESCRIPTION", help="What it does.")
]
ParametersOpt = Annotated[
    Path | None,
    opt(
        "--parameters",
        env="SCRIPT_PARAMETERS",
        help='A JSON file with the typed parameters it declares: [{"name": "crf", "type": '
        '"int", "min": 0, "max": 51, "default": 23}, …] ([] removes them).',
    ),
]


@scripts_app.command("list")
@server_options
def list_scripts(remote: Remote, as_json: JsonOpt = False) -> None:
    """List the stored scripts and the parameters each declares."""
    with remote.client() as c:
        found = c.scripts()
    if as_json:
        formatting.print_json(found)
        return
    if not found:
        formatting.out().print("no scripts yet: create one with `jobbalancer scripts create`")
        return
    rows = [
        [
            str(s.get("id", "")),
            escape(str(s.get("name", ""))),
            escape(str(s.get("interpreter") or "#! line")),
            escape(", ".join(str(p.get("name")) for p in s.get("parameters") or []) or "—"),
            escape(str(s.get("description") or "")),
        ]
        for s in found
    ]
    formatting.print_table(
        ["id", "name", "interpreter", "parameters", "description"], rows, flexible="description"
    )


@scripts_app.command("show")
@server_options
def show(
    remote: Remote,
    script: ScriptArg,
    content: Annotated[
        bool, opt("--content", "-c", env="SCRIPT_CONTENT", help="Print the body too.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show a script: interpreter, description, and its parameters as a table."""
    with remote.client() as c:
        found = c.script(script)
    if as_json:
        formatting.print_json(found)
        return
    out = formatting.out()
    out.print(f"[bold]{escape(str(found['name']))}[/] (id {found['id']})")
    out.print(f"interpreter: {escape(str(found.get('interpreter') or 'the #! line'))}")
    if found.get("description"):
        out.print(f"description: {escape(str(found['description']))}")
    params = found.get("parameters") or []
    if params:
        out.print(parameters_table(params))
        name = escape(str(found["name"]))
        example = " ".join(f"-p {escape(str(p['name']))}=…" for p in params[:3])
        out.print(f"[dim]jobbalancer submit --script {name} {example}[/]")
    else:
        out.print("parameters: none declared (-p values are passed as given, $1, $2, …)")
    if content:
        print(found.get("content", ""), end="", flush=True)


def parameters_table(params: list[dict[str, Any]]) -> Table:
    """The declared parameters, one a row; rules and help wrap rather than vanish."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("#", "name", "type", "required", "default"):
        table.add_column(column, no_wrap=True)
    table.add_column("rules", overflow="fold", ratio=1)
    table.add_column("help", overflow="fold", ratio=2)
    for i, p in enumerate(params, start=1):
        table.add_row(*parameter_row(i, p))
    return table


def parameter_row(position: int, p: dict[str, Any]) -> list[str]:
    """One declared parameter as a row of ``scripts show``."""
    rules = []
    if p.get("values"):
        rules.append(" | ".join(str(v) for v in p["values"]))
    if p.get("regex") is not None:
        rules.append(f"matches {p['regex']}")
    if p.get("min") is not None:
        rules.append(f"≥ {p['min']}")
    if p.get("max") is not None:
        rules.append(f"≤ {p['max']}")
    default = p.get("default")
    shown = "" if default is None else json.dumps(default) if isinstance(default, bool) else default
    return [
        str(position),
        escape(str(p.get("name", ""))),
        str(p.get("type", "")),
        "yes" if p.get("required") else "no",
        escape(str(shown)),
        escape(", ".join(rules)),
        escape(str(p.get("help") or "")),
    ]


@scripts_app.command("create")
@server_options
def create(
    remote: Remote,
    name: Annotated[str, typer.Argument(help="The new script's name.")],
    file: Annotated[Path, typer.Argument(help="The script's body ('-': standard input).")],
    interpreter: InterpreterOpt = None,
    description: DescriptionOpt = None,
    parameters: ParametersOpt = None,
) -> None:
    """Store a new script (operators and admins), with its typed parameters if given."""
    body: dict[str, Any] = {"name": name, "content": _read(file), "interpreter": interpreter}
    if description is not None:
        body["description"] = description
    if parameters is not None:
        body["parameters"] = _parameters(parameters)
    with remote.client() as c:
        made = c.request("POST", "/api/v1/scripts", json=body)
    print(made["id"], flush=True)


@scripts_app.command("edit")
@server_options
def edit(
    remote: Remote,
    script: ScriptArg,
    file: Annotated[
        Path | None,
        opt("--file", "-f", env="SCRIPT_FILE", help="A new body ('-': standard input)."),
    ] = None,
    name: Annotated[str | None, opt("--name", env="SCRIPT_NAME", help="A new name.")] = None,
    interpreter: InterpreterOpt = None,
    description: DescriptionOpt = None,
    parameters: ParametersOpt = None,
) -> None:
    """Change a script: only what is given changes."""
    body: dict[str, Any] = {}
    for key, value in (("name", name), ("interpreter", interpreter), ("description", description)):
        if value is not None:
            body[key] = value
    if file is not None:
        body["content"] = _read(file)
    if parameters is not None:
        body["parameters"] = _parameters(parameters)
    if not body:
        formatting.fail(exits.RET_USAGE, "nothing to change: give --file, --parameters, …")
    with remote.client() as c:
        found = c.script(script)
        c.request("PATCH", f"/api/v1/scripts/{found['id']}", json=body)
    formatting.err().print(f"script {escape(str(found['name']))} saved")


def _read(path: Path) -> str:
    try:
        if str(path) == "-":
            return typer.get_text_stream("stdin").read()
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        formatting.fail(exits.RET_USAGE, f"{path}: {exc}")


def _parameters(path: Path) -> Any:
    try:
        return json.loads(_read(path))
    except ValueError as exc:
        formatting.fail(exits.RET_USAGE, f"{path}: not valid JSON ({exc})")
