"""Where the time of domicile's move goes: ``move.py --profile`` (run ``move.py``).

py-spy samples the child from outside (collapsed stacks, ``--format raw``);
cProfile runs inside it.  Both are reported the same way: each step of
``execute()``, then the helpers the steps share, split by caller.
"""

from __future__ import annotations

import argparse
import io
import pstats
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def say(message: str) -> None:
    """A progress line, flushed at once."""
    print(message, flush=True)


# Where the time of a move goes.  STEPS split execute() into its parts; SPREAD are
# helpers the steps share, each split by the step (py-spy) or function (cProfile)
# that called it.  (label, file, qualified name)
EXECUTE = ("run/executor.py", "execute")
STEPS = [
    ("census scans (before, after each pass)", "domicile/scan.py", "scan"),
    ("read source pages (Mover.read)", "run/batch.py", "Mover.read"),
    ("journal the batch rows (Journal.add_batch)", "run/journal.py", "Journal.add_batch"),
    ("copy to home (Mover.copy_batch)", "run/batch.py", "Mover.copy_batch"),
    ("verify at home (Mover.verify_batch)", "run/batch.py", "Mover.verify_batch"),
    ("compare-and-delete (Mover.delete_batch)", "run/batch.py", "Mover.delete_batch"),
]
SPREAD = [
    ("row digests (digest_hex)", "run/rows.py", "digest_hex"),
    ("selects by key IN-lists (select_by_keys)", "run/rows.py", "select_by_keys"),
    ("journal rows read back (Journal.rows)", "run/journal.py", "Journal.rows"),
    ("journal state changes (Journal.transition)", "run/journal.py", "Journal.transition"),
    ("journal batch read back (Journal.batch)", "run/journal.py", "Journal.batch"),
    ("copied_before look-ups", "run/journal.py", "Journal.copied_before"),
    ("insert at home (Mover._write)", "run/batch.py", "Mover._write"),
    ("source DELETE (Mover._delete_rows)", "run/batch.py", "Mover._delete_rows"),
    ("placement verdict per row (classify)", "domicile/placement.py", "classify"),
    ("owner countries (Directory.resolve)", "domicile/scan.py", "Directory.resolve"),
    ("journal keys to column types (normalize_key)", "run/rows.py", "normalize_key"),
    (
        "transaction commits (any store, journal)",
        "sqlalchemy/engine/base.py",
        "Connection._commit_impl",
    ),
]


@dataclass
class Spent:
    """Time spent in one function: in all, and by who called it."""

    seconds: float = 0.0
    calls: int | None = None
    by: dict[str, float] = field(default_factory=dict)


def from_cprofile(path: Path, wanted: list[tuple[str, str]]) -> dict[tuple[str, str], Spent]:
    """Cumulative time of each wanted (file, qualified name), split by immediate caller."""
    raw: dict[tuple[str, int, str], Any] = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    out = {w: Spent(calls=0) for w in wanted}
    for (file, _line, name), (_cc, nc, _tt, ct, callers) in raw.items():
        for suffix, qualname in wanted:
            if name == qualname.rsplit(".", 1)[-1] and file.endswith(suffix):
                spent = out[(suffix, qualname)]
                spent.seconds += ct
                spent.calls = (spent.calls or 0) + nc
                for (cfile, cline, caller), (_c, _n, _t, cct) in callers.items():
                    by = f"{caller} ({Path(cfile).name}:{cline})"
                    spent.by[by] = spent.by.get(by, 0.0) + cct
    return out


SPY_RATE = 100  # samples per second
TOP = 15
_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def from_py_spy(
    path: Path, wanted: list[tuple[str, str]], rate: int
) -> dict[tuple[str, str], Spent]:
    """Seconds in each wanted function from py-spy's collapsed stacks, split by step."""
    out = {w: Spent() for w in wanted}
    steps = {(suffix, name): label.split(" (")[0] for label, suffix, name in STEPS}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        seconds = int(count) / rate
        frames = []
        for frame in stack.split(";"):
            m = _FRAME.match(frame)
            if m:
                frames.append((m["file"], m["name"]))
        hit = {w for w in wanted if any(f.endswith(w[0]) and n == w[1] for f, n in frames)}
        step = next((label for (sfx, name), label in steps.items() if (sfx, name) in hit), "other")
        for w in hit:
            out[w].seconds += seconds
            out[w].by[step] = out[w].by.get(step, 0.0) + seconds
    return out


def print_profile(spent: dict[tuple[str, str], Spent], how: str) -> None:
    """Where the time of execute() went: its steps, then the helpers they share."""
    whole = spent[EXECUTE].seconds
    say(f"  where the time goes ({how}; execute() = {whole:.1f}s = 100%):")

    def line(label: str, s: Spent) -> None:
        calls = f"{s.calls:>9,} calls" if s.calls is not None else ""
        say(f"    {label:<50} {s.seconds:8.1f}s {s.seconds / whole:6.1%} {calls}")

    accounted = 0.0
    for label, suffix, name in STEPS:
        line(label, spent[(suffix, name)])
        accounted += spent[(suffix, name)].seconds
    line("everything else", Spent(whole - accounted))
    say("  shared helpers, by caller:")
    for label, suffix, name in SPREAD:
        s = spent[(suffix, name)]
        line(label, s)
        for by, seconds in sorted(s.by.items(), key=lambda kv: -kv[1])[:5]:
            if seconds >= 0.05 * max(s.seconds, 1e-9):
                say(f"      {'from ' + by:<48} {seconds:8.1f}s")


def wanted() -> list[tuple[str, str]]:
    """Every function the profile report looks for."""
    return [EXECUTE, *[(f, n) for _l, f, n in STEPS], *[(f, n) for _l, f, n in SPREAD]]


def show_profile(path: Path, args: argparse.Namespace) -> None:
    """Print the report, then the functions with the most time of their own."""
    if args.profile == "cprofile":
        print_profile(from_cprofile(path, wanted()), f"cProfile, {args.profile_timer} clock")
        buf = io.StringIO()
        pstats.Stats(str(path), stream=buf).sort_stats("tottime").print_stats(TOP)
        lines = buf.getvalue().splitlines()
        start = next((i for i, line in enumerate(lines) if "ncalls" in line), len(lines))
        say("  functions by own time:")
        for line in lines[start:]:
            if line.strip():
                say("    " + line)
        return
    print_profile(from_py_spy(path, wanted(), SPY_RATE), f"py-spy, {SPY_RATE} samples/s")
    own: dict[str, float] = {}
    total = 0.0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        leaf = stack.rsplit(";", 1)[-1]
        m = _FRAME.match(leaf)
        key = f"{m['name']} ({m['file']})" if m else leaf
        own[key] = own.get(key, 0.0) + int(count) / SPY_RATE
        total += int(count) / SPY_RATE
    say(f"  functions by own time (of {total:.1f}s sampled):")
    for key, seconds in sorted(own.items(), key=lambda kv: -kv[1])[:TOP]:
        say(f"    {seconds:8.1f}s {seconds / total:6.1%}  {key}")
