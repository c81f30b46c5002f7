"""What a worker process loads: each module costs idle memory on every worker host
(issue 16 asks for a small worker), so what only some jobs need is imported when used."""

from __future__ import annotations

import subprocess
import sys

# The worker's entry point (`jobbalancer worker`), with its loop and everything it imports.
_WORKER = "import jobbalancer.cli, jobbalancer.cli.run, jobbalancer.worker.loop"


def _loaded_by_worker(*modules: str) -> dict[str, bool]:
    code = f"import sys; {_WORKER}; print(*[m in sys.modules for m in {list(modules)!r}])"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    return dict(zip(modules, (flag == "True" for flag in out), strict=True))


def test_a_worker_loads_no_cryptography_until_a_job_has_a_secret() -> None:
    # About 6 MiB of memory; vault imports it when it seals or opens a value.
    assert _loaded_by_worker("cryptography") == {"cryptography": False}


def test_a_worker_loads_no_web_stack() -> None:
    loaded = _loaded_by_worker("fastapi", "starlette", "jinja2", "uvicorn", "httpx")
    assert not any(loaded.values()), loaded
