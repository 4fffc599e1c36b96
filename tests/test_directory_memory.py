"""Memory stays bounded when the subjects directory lives in another store (issue 12).

The fleet: a directory store ``dir`` (PostgreSQL) holding every user and their
country, and a legacy store ``sg`` (PostgreSQL) holding one post per user and *no*
directory, so every owner the census or the move meets must be looked up
across stores.  A twentieth of the users are US users whose posts move home to
``us``.  The census and the run each run in a subprocess at 1x, 10x and 30x
the users; their peak resident memory (the kernel's ``ru_maxrss`` of the
child, read with ``os.wait4``) is printed with the growth per subject, and
must not grow with the number of subjects: a Python object per subject would
add several hundred bytes each, far more than the bound asserted here.
The move is checked by the test's own SQL.  The stores are PostgreSQL
databases so that the client's memory is domicile's alone (an in-process SQLite
store's page cache, up to 64 MiB a connection, would grow with the files).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

pytestmark = pytest.mark.slow

BASE = 10_000  # users at 1x
SCALES = (1, 10, 30)
US_EVERY = 20  # one user in 20 is a US user: their posts move
# A Python object per subject costs well over 100 bytes (a dict entry, an int, a
# row tuple); 200,000 more subjects (10x -> 30x) would add >= 20 MB that way.
BOUND_MB = 12.0


def _fleet(folder: Path, users: int, make_db: Callable[[str], str]) -> Path:
    folder.mkdir(parents=True)
    urls = {name: make_db("postgresql") for name in ("dir", "sg", "us")}
    md = sa.MetaData()
    people = sa.Table(
        "users",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("country", sa.String(2)),
    )
    posts = sa.Table(
        "posts",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.Integer),
        sa.Column("body", sa.String(40)),
    )
    countries = ("SG", "MY", "TH", "ID", "PH")
    for name in ("dir", "sg", "us"):
        engine = sa.create_engine(urls[name])
        tables = [people] if name == "dir" else [posts]
        md.create_all(engine, tables=tables)
        raw = engine.raw_connection()
        try:  # COPY: 300,000 rows in a second or two
            with raw.cursor() as cur:
                if name == "dir":
                    with cur.copy("COPY users (id, country) FROM STDIN") as copy:
                        for i in range(1, users + 1):
                            copy.write_row((i, "US" if i % US_EVERY == 0 else countries[i % 5]))
                elif name == "sg":
                    with cur.copy("COPY posts (id, user_id, body) FROM STDIN") as copy:
                        for i in range(1, users + 1):
                            copy.write_row((i, i, f"post {i}"))
            raw.commit()
        finally:
            raw.close()
        engine.dispose()
    data = {
        "version": 1,
        "state": "sqlite:///.domicile/state.db",
        "stores": {
            # the directory's own rows stay (no US rule binds its store): only posts move
            "dir": {"url": urls["dir"], "labels": {"country": "US"}},
            "sg": {"url": urls["sg"], "labels": {"country": "SG"}},
            "us": {"url": urls["us"], "labels": {"country": "US"}},
        },
        "subjects": {"dataset": "users", "id": "id", "country": "country"},
        "jurisdictions": {
            "US": {"countries": ["US"], "allowed": {"country": "US"}, "home": ["us"]}
        },
        "datasets": {
            "users": {"table": "users", "key": ["id"], "owner": "id", "stores": ["dir"]},
            "posts": {"table": "posts", "key": ["id"], "owner": "user_id", "stores": ["sg", "us"]},
        },
    }
    path = folder / "domicile.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# Runs domicile and, at its exit, writes its peak resident memory (VmHWM: this
# process's own high-water mark since exec, which rusage is not: it keeps the
# forking parent's size) to the file named by the first argument.
_MEASURED = """
import atexit, sys
from domicile.cli import run_cli

def _peak(path=sys.argv[1]):
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open(path, "w").write(line.split()[1])

atexit.register(_peak)
sys.exit(run_cli(sys.argv[2:]))
"""


def _peak_mb(out_file: Path, *args: str) -> tuple[float, str]:
    """Run ``domicile ARGS`` in a child; (its peak resident memory in MB, its output)."""
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURED, str(out_file), *args],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, COLUMNS="200"),
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode in (0, 3), out  # scan: 3 = violations
    return int(out_file.read_text()) / 1024, out


def _count(path: Path, store: str, where: str = "1 = 1") -> int:
    engine = sa.create_engine(yaml.safe_load(path.read_text())["stores"][store]["url"])
    with engine.connect() as conn:
        n = int(conn.exec_driver_sql(f"SELECT count(*) FROM posts WHERE {where}").scalar_one())
    engine.dispose()
    return n


def test_memory_is_bounded_by_the_batch_not_the_subjects(
    tmp_path: Path, make_db: Callable[[str], str]
) -> None:
    census_mb: dict[int, float] = {}
    run_mb: dict[int, float] = {}
    for scale in SCALES:
        users = BASE * scale
        path = _fleet(tmp_path / f"x{scale}", users, make_db)
        census_mb[scale], out = _peak_mb(path.parent / "scan.peak", "scan", "-c", str(path))
        assert "posts" in out, out
        run_mb[scale], out = _peak_mb(
            path.parent / "run.peak", "run", "-c", str(path), "--batch-size", "2000"
        )
        assert "done" in out, out
        moving = users // US_EVERY
        # the test's own reads: every US post home, none left abroad, the rest kept
        assert _count(path, "us") == moving, out
        assert _count(path, "sg", f"mod(user_id, {US_EVERY}) = 0") == 0
        assert _count(path, "sg") == users - moving
    lines = ["peak resident memory, directory in another store:"]
    for label, peaks in (("census", census_mb), ("run", run_mb)):
        row = ", ".join(f"{BASE * s:,} subjects {peaks[s]:.1f} MB" for s in SCALES)
        extra = BASE * (SCALES[-1] - SCALES[0])
        per = (peaks[SCALES[-1]] - peaks[SCALES[0]]) * 2**20 / extra
        lines.append(f"  {label}: {row}; growth {per:.1f} bytes per subject")
    print("\n".join(lines))
    for peaks in (census_mb, run_mb):
        assert peaks[30] - peaks[10] < BOUND_MB, "\n".join(lines)
