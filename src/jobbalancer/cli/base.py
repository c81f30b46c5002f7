"""The command tree, the options several commands share, and the settings they load.

Every option can also be set by an environment variable, and ``--help`` names it
(:func:`opt`). Options that are settings use the settings' own variables
(``JOBBALANCER_<SECTION>_<KEY>``). Errors end in :class:`_Group`, which hands them to
:mod:`~jobbalancer.cli.exits`.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import sqlalchemy as sa
import typer
from typer.core import TyperGroup

from jobbalancer import db, errors, procsec
from jobbalancer import settings as settings_mod
from jobbalancer.cli import exits, formatting
from jobbalancer.settings import Settings

if TYPE_CHECKING:  # imported where used: `jobbalancer worker` keeps httpx out of its memory
    from jobbalancer import client

ENV = settings_mod.ENV_PREFIX  # JOBBALANCER_: every option's variable starts so
DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 30.0
_URL_META = "jobbalancer.database_url"  # ctx.meta: the database in use, for messages


class _Group(TyperGroup):
    """The one place errors become messages and exit codes rather than tracebacks."""

    def invoke(self, ctx: Any) -> Any:  # Any: typer's vendored click Context
        try:
            return super().invoke(ctx)
        except exits.reported() as exc:
            raise typer.Exit(exits.report(exc, ctx.meta.get(_URL_META))) from None


app = typer.Typer(
    cls=_Group,
    name="jobbalancer",
    help="Spread shell commands and stored scripts over a cluster of worker machines.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
users_app = typer.Typer(help="Users (straight on the database).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (straight on the database).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")


# -- options ------------------------------------------------------------------------------


def opt(*names: str, env: str, help: str, **kwargs: Any) -> Any:
    """An option that ``JOBBALANCER_<env>`` sets too; ``--help`` names the variable."""
    return typer.Option(*names, envvar=ENV + env, help=help, show_envvar=True, **kwargs)


ConfigOpt = Annotated[
    Path | None,
    opt(
        "--config",
        env="CONFIG",
        help="Settings file (TOML). Default: ./jobbalancer.toml when it exists.",
    ),
]
DatabaseUrlOpt = Annotated[
    str | None,
    opt(
        "--database-url",
        env="DATABASE_URL",
        help="SQLAlchemy URL of the shared database. Default: SQLite in the data dir. "
        "A password here is visible to every local user: use the variable or "
        "--database-url-file instead.",
    ),
]
DatabaseUrlFileOpt = Annotated[
    str | None,
    opt(
        "--database-url-file",
        env="DATABASE_URL_FILE",
        help="File (mode 0600) holding the database URL: keeps its password off command lines.",
    ),
]
DataDirOpt = Annotated[
    str | None,
    opt(
        "--data-dir",
        env="DATA_DIR",
        help=f"Where the SQLite database lives. Default: ./{settings_mod.DEFAULT_DATA_DIR}.",
    ),
]
HostOpt = Annotated[
    str | None,
    opt(
        "--host",
        env="SERVER_HOST",
        help="Address to serve on (0.0.0.0: every interface). Default: 127.0.0.1.",
    ),
]
LogLevelOpt = Annotated[
    str | None,
    opt("--log-level", env="LOG_LEVEL", help="debug, info, warning or error. Default: info."),
]
UrlOpt = Annotated[
    str | None,
    opt("--url", env="URL", help=f"Base URL of the jobbalancer server. Default: {DEFAULT_URL}."),
]
ApiKeyOpt = Annotated[
    str | None,
    opt(
        "--api-key",
        env="API_KEY",
        help="API key (printed on first start, or `jobbalancer keys create NAME --user USER`).",
    ),
]
TimeoutOpt = Annotated[
    float | None,
    opt(
        "--timeout",
        env="TIMEOUT",
        min=0.1,
        help=f"Seconds any one request may take. Default: {DEFAULT_TIMEOUT:g}.",
    ),
]
JsonOpt = Annotated[
    bool,
    opt("--json", env="JSON", help="Print JSON instead of a table."),
]


class LogStream(enum.StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"
    ALL = "all"


JobIdArg = Annotated[int, typer.Argument(help="The job's id.", min=1, show_default=False)]
PasswordStdinOpt = Annotated[
    bool,
    opt(
        "--password-stdin",
        env="PASSWORD_STDIN",
        help="Read the password from standard input instead of generating one.",
    ),
]


# -- options shared by several commands, declared once ------------------------------------


@dataclass(frozen=True)
class Target:
    """The database a command works on: its config file, URL (or URL file) and data dir."""

    ctx: typer.Context
    config: Path | None
    database_url: str | None
    database_url_file: str | None
    data_dir: str | None

    def settings(self, **overrides: Any) -> Settings:
        """Settings from file, environment and these flags (``overrides`` more of them).

        Every command that opens the database comes through here: it warns about a
        password given on the command line, and makes the SQLite data dir private (0700).
        """
        _warn_password_flag(self.ctx)
        flags = {"database.url": self.database_url, "database.url_file": self.database_url_file}
        loaded = settings_mod.load(self.config, data_dir=self.data_dir, **flags, **overrides)
        self.ctx.meta[_URL_META] = safe_url(loaded.database_url)
        data_dir = loaded.private_data_dir
        if data_dir is not None and (repaired := procsec.make_private_dir(data_dir)):
            logging.getLogger("jobbalancer.cli").warning(
                "made the data dir private to its user (others could read it): %s", repaired
            )
        return loaded

    @contextlib.contextmanager
    def engine(
        self, *, schema: Callable[[sa.Engine], object] | None = db.ensure_schema
    ) -> Iterator[sa.Engine]:
        """An engine on the configured database, its schema prepared by ``schema``: by
        default :func:`db.ensure_schema` (created on an empty database, otherwise it must be
        this version's: only servers and `db upgrade` migrate); None: left as it is."""
        engine = db.connect(self.settings().database_url, pool_size=2)
        try:
            if schema is not None:
                schema(engine)
            yield engine
        finally:
            engine.dispose()


@dataclass(frozen=True)
class Remote:
    """The server a client command talks to."""

    url: str
    api_key: str | None
    timeout: float

    def client(self) -> client.Client:
        from jobbalancer import client

        return client.Client(self.url, self.api_key, self.timeout)

    @classmethod
    def resolve(
        cls, ctx: typer.Context, url: str | None, api_key: str | None, timeout: float | None
    ) -> Remote:
        """The client options of a command: its own flag if given on its command line,
        else the same flag before the subcommand (``jobbalancer --url URL submit``), else
        the variable, else the default."""
        root = ctx.find_root()

        def pick(name: str, own: Any, default: Any) -> Any:
            if _from_command_line(ctx, name):
                return own
            if root is not ctx and _from_command_line(root, name):
                return root.params[name]
            return default if own is None else own  # own: from the variable, if set

        return cls(
            url=pick("url", url, DEFAULT_URL),
            api_key=pick("api_key", api_key, None),
            timeout=pick("timeout", timeout, DEFAULT_TIMEOUT),
        )


def _from_command_line(ctx: Any, name: str) -> bool:  # Any: typer's vendored click Context
    source = ctx.get_parameter_source(name)  # typer's own click's enum
    return getattr(source, "name", None) == "COMMANDLINE"


@app.callback()
def _client_options(
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    timeout: TimeoutOpt = None,
) -> None:
    # The client commands' options, also accepted before the subcommand (`jobbalancer
    # --url URL submit -- true`): Remote.resolve reads them from this, the root context.
    return None


def _option(name: str, annotation: Any, default: Any = None) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def _with_options(
    extra: Sequence[inspect.Parameter], into: str, build: Callable[..., object]
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A decorator: the command gets the ``extra`` options (typer reads a command's options
    from its signature and type hints, so both are rewritten), and its parameter ``into``
    gets ``build(**their values)``. The options stay the command's own: ``users create
    bob --database-url URL`` as before."""
    names = [p.name for p in extra]

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != into]
        if into not in signature.parameters or {p.name for p in own} & set(names):
            raise TypeError(f"{command.__name__} must take {into} and none of {names}")

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> None:
            built = build(**{n: kwargs.pop(n) for n in names})
            command(**kwargs, **{into: built})

        params = [*own, *extra]
        wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        wrapper.__annotations__["return"] = signature.return_annotation
        return wrapper

    return decorate


database_options = _with_options(
    [
        _option("ctx", typer.Context, inspect.Parameter.empty),
        _option("config", ConfigOpt),
        _option("database_url", DatabaseUrlOpt),
        _option("database_url_file", DatabaseUrlFileOpt),
        _option("data_dir", DataDirOpt),
    ],
    "target",
    Target,
)
"""Adds --config, --database-url, --database-url-file and --data-dir; the command's
``target`` parameter gets them as one :class:`Target`."""

server_options = _with_options(
    [
        _option("ctx", typer.Context, inspect.Parameter.empty),
        _option("url", UrlOpt),
        _option("api_key", ApiKeyOpt),
        _option("timeout", TimeoutOpt),
    ],
    "remote",
    Remote.resolve,
)
"""Adds --url, --api-key and --timeout; the command's ``remote`` parameter gets them as
one :class:`Remote`. They may also come before the subcommand (:meth:`Remote.resolve`)."""


def _warn_password_flag(ctx: typer.Context) -> None:
    """One line on stderr when --database-url carries a password: every local user can
    read a command line (/proc/PID/cmdline, ps)."""
    url = ctx.params.get("database_url")
    source = ctx.get_parameter_source("database_url")  # typer's own click's enum
    if not url or getattr(source, "name", None) != "COMMANDLINE":
        return
    if settings_mod.has_password(url):
        formatting.err().print(
            "[yellow]warning:[/] the password in --database-url is visible to every local "
            "user in /proc/PID/cmdline; give the URL by "
            f"{ENV}DATABASE_URL, --database-url-file (mode 0600) or the config file "
            "(mode 0600) instead"
        )


def safe_url(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        return db.normalize_url(url).render_as_string(hide_password=True)
    except errors.ConfigError:
        return url


def setup_logging(level_name: str) -> None:
    level = logging.getLevelName(level_name.upper())
    if not isinstance(level, int):
        raise errors.ConfigError(
            f"log level {level_name!r} is not one of debug, info, warning, error",
            field="log_level",
        )
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if level > logging.DEBUG:  # servers upgrade the schema at start: no need to say so
        logging.getLogger("alembic").setLevel(logging.WARNING)
