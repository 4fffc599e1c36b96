"""Start-up stays light: the command line imports only what the command needs.

``domicile --help`` must not pay for SQLAlchemy, pydantic, the run package or
the report, and ``domicile check`` must not import what only a run, a scan or
the demo uses.  Each case runs in a fresh interpreter and looks at
``sys.modules``: what was imported, not how long it took.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import fleetkit

# Neither importing the command line nor printing its help may import these.
HEAVY = (
    "sqlalchemy",
    "pydantic",
    "cryptography",
    "yaml",
    "faker",
    "fsspec",
    "dask",
    "domicile.api",
    "domicile.datamap",
    "domicile.fleet",
    "domicile.run",
    "domicile.report",
    "domicile.render",
    "domicile.demo",
    "domicile.keys",
    "domicile.audit.log",
)

# `domicile check` needs SQLAlchemy, pydantic and the connectors, but none of these.
NOT_FOR_CHECK = (
    "faker",
    "fsspec",
    "dask",
    "cryptography",
    "domicile.run",
    "domicile.report",
    "domicile.render",
    "domicile.demo",
    "domicile.plan",
    "domicile.scan",
    "domicile.keys",
    "domicile.digest",
    "domicile.audit.log",
)

_MARK = "MODULES="


def _modules_after(code: str, cwd: Path | None = None) -> tuple[int, str, set[str]]:
    """Run *code* in a fresh interpreter; its exit code, output and final ``sys.modules``."""
    script = (
        "import json, sys\n"
        f"{code}\n"
        f"print({_MARK!r} + json.dumps(sorted(sys.modules)))\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    out, _, listing = proc.stdout.rpartition(_MARK)
    assert listing, f"no module list printed:\n{proc.stdout}\n{proc.stderr}"
    return proc.returncode, out + proc.stderr, set(json.loads(listing))


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """The modules of *modules* that are one of *names* or inside one of them."""
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_importing_the_cli_imports_nothing_heavy():
    rc, out, modules = _modules_after("import domicile.cli\nrc = 0")
    assert rc == 0, out
    assert "domicile.cli" in modules and "domicile.audit.cli" in modules
    assert _loaded(modules, HEAVY) == []


def test_help_imports_nothing_heavy(tmp_path):
    rc, out, modules = _modules_after(
        "from domicile.cli import run_cli\nrc = run_cli(['--help'])", cwd=tmp_path
    )
    assert rc == 0, out
    assert "check" in out and "audit" in out
    assert _loaded(modules, HEAVY) == []


def test_command_help_needs_no_library(tmp_path):
    # Typer itself may use pydantic to coerce parameters: only domicile's own are checked
    for argv in (["check", "--help"], ["run", "--help"], ["audit", "verify", "--help"]):
        rc, out, modules = _modules_after(
            f"from domicile.cli import run_cli\nrc = run_cli({argv!r})", cwd=tmp_path
        )
        assert rc == 0, out
        assert "--config" in out
        assert _loaded(modules, tuple(n for n in HEAVY if n.startswith("domicile."))) == [], argv
        assert _loaded(modules, ("sqlalchemy", "cryptography", "faker", "fsspec")) == [], argv


def test_check_imports_only_what_it_uses(tmp_path):
    urls = {s: f"sqlite:///{tmp_path / (s + '.db')}" for s in ("sg", "us", "ca")}
    path = fleetkit.build(tmp_path, urls)
    rc, out, modules = _modules_after(
        f"from domicile.cli import run_cli\nrc = run_cli(['check', '-c', {str(path)!r}])",
        cwd=tmp_path,
    )
    assert rc == 0, out
    assert "every store reached and distinct" in out
    assert {"sqlalchemy", "domicile.datamap", "domicile.fleet"} <= modules
    assert _loaded(modules, NOT_FOR_CHECK) == []


def test_lazy_names_still_resolve():
    from domicile import api, audit, defaults, keys, plan

    assert api.RunOptions.__name__ == "RunOptions" and api.RunResult.__name__ == "RunResult"
    assert audit.AuditLog.__module__ == "domicile.audit.log"
    assert audit.verify_log.__module__ == "domicile.audit.verify"
    assert plan.DEFAULT_BATCH_SIZE is defaults.DEFAULT_BATCH_SIZE
    assert keys.DEFAULT_KEY_NAME == defaults.DEFAULT_KEY_NAME == "domicile-audit"
