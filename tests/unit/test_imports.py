"""What a worker and a server process load: each module costs idle memory on every host
(issue 16 asks for small processes), so what only some jobs or scripts need is imported
when used."""

from __future__ import annotations

import subprocess
import sys

# The entry points (`jobbalancer worker`, `jobbalancer server`) with what they import.
_WORKER = "import jobbalancer.cli, jobbalancer.cli.run, jobbalancer.worker.loop"
_SERVER = "import jobbalancer.cli, jobbalancer.cli.run, jobbalancer.server, jobbalancer.app"


def _loaded_by_worker(*modules: str) -> dict[str, bool]:
    return _loaded(_WORKER, modules)


def _loaded(entry: str, modules: tuple[str, ...]) -> dict[str, bool]:
    code = f"import sys; {entry}; print(*[m in sys.modules for m in {list(modules)!r}])"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    return dict(zip(modules, (flag == "True" for flag in out), strict=True))


def test_a_worker_loads_no_cryptography_until_a_job_has_a_secret() -> None:
    # About 6 MiB of memory; vault imports it when it seals or opens a value.
    assert _loaded_by_worker("cryptography") == {"cryptography": False}


def test_a_process_loads_postgresql_s_dialect_only_to_use_it() -> None:
    # About 2 MiB, on every SQLite and MariaDB host; an engine imports its own dialect.
    # (MariaDB's is loaded everywhere: db/types.py's column variants name its types.)
    for entry in (_WORKER, _SERVER):
        assert _loaded(entry, ("sqlalchemy.dialects.postgresql",)) == {
            "sqlalchemy.dialects.postgresql": False
        }, entry


def test_a_worker_loads_no_web_stack() -> None:
    loaded = _loaded_by_worker("fastapi", "starlette", "jinja2", "uvicorn", "httpx")
    assert not any(loaded.values()), loaded


def test_a_server_loads_re2_only_for_a_script_with_a_regex() -> None:
    # About 3 MiB; scriptparams imports it when a declared regex is checked or matched.
    assert _loaded(_SERVER, ("re2", "cryptography")) == {"re2": False, "cryptography": False}
