"""A random crash campaign: move a mixed fleet while the application writes, SIGKILL domicile.

By hand: ``.venv/bin/python tests/campaign.py --rounds 1000 [--seed S] [--budget-seconds T]``
(it makes its own PostgreSQL and MariaDB databases and its own SeaweedFS server; ``--rounds``
counts kills); from pytest: :func:`run_campaign` with the fixtures' URLs and S3 server
(tests/test_campaign.py).  The fleet and the application are in tests/campaign_app.py.

The campaign starts ``domicile run`` (or ``--resume RUN``) again and again while the
application writes, and disturbs each launch with a :class:`Fault` drawn at random: SIGKILL at
the N-th protocol point (crashrun's ``--crash-at STATE:N``), a few milliseconds after it
(inside the step that follows), or after a random delay.  After every launch, with the writer
paused, :meth:`Campaign.check` reads every store independently: every live record is somewhere
with its latest version, no copy has content never written, nothing sits outside its origin
and its home, a deleted record is at most a stale home copy (none once a run is done), foreign
keys hold.  When a run finishes, the next one starts on freshly seeded violations (new
families abroad), and ``audit verify`` must pass.  At the end the writer stops, a clean run
finishes the move, and the final check wants every record exactly where the rule allows (one
copy, latest digest), no hidden temporary objects, ``audit verify`` and ``scan`` exit 0.

New fault kinds (a proxy that drops connections, a disk that fills) plug in as :class:`Fault`
subclasses in the list given to :class:`Campaign`: ``before`` / ``after`` run around a launch.

Each launch is a fresh process forked from a fork server that imported domicile once
(tests/campaign_launch.py); ``--spawn`` starts tests/crashrun.py instead.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from campaign_app import (
    COLUMNS,
    HOMES,
    LEGACY,
    PARENT,
    S3_CHOICES,
    SQL_STORES,
    Rec,
    Truth,
    World,
    Writer,
    build,
    row_digest,
)
from campaign_launch import Launcher

BATCH = "4"  # small batches: many protocol points, so many kills per move
POINTS = ("copying", "copied", "verified", "deleting", "done", "dataset-done", "read-ahead")
IN_STEP = tuple(p for p in POINTS if p != "dataset-done")  # points inside a step
FAMILIES = 6  # users (each with a post, its blob, a comment, an avatar) per legacy store
RESEED = 3  # new families abroad when a move finished
STUCK = 3  # a move whose undisturbed launches stop this often in a row is reported stuck
BOX = set("│┃┏┗┡└┌├┣┠╭╰")  # the first characters of the lines of a table (left out of reports)

# -- faults ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """How one launch is disturbed: a hook spec for the child and/or a delay for the parent."""

    at: str | None = None  # STATE:N (SIGKILL at the N-th point) or STATE:N:MS (MS ms later)
    delay: float | None = None  # SIGKILL from outside after this many seconds


class Fault:
    """A kind of fault.  Subclasses pick an :class:`Attempt`; ``before`` / ``after`` run
    around the launch (a network fault would break and heal a proxy there)."""

    name = "clean"
    weight = 1.0

    def attempt(self, c: Campaign) -> Attempt:
        return Attempt()

    def before(self, c: Campaign) -> None:
        """Called just before the launch."""

    def after(self, c: Campaign) -> None:
        """Called once the launch ended (killed or not), before the checks."""


class KillAtPoint(Fault):
    name, weight = "kill-at-point", 5.0

    def attempt(self, c: Campaign) -> Attempt:
        state = c.rng.choice(POINTS)
        return Attempt(at=f"{state}:{c.rng.randint(1, c.nth_limit(state))}")


class KillInsideStep(Fault):
    name, weight = "kill-inside-step", 3.0

    def attempt(self, c: Campaign) -> Attempt:
        state = c.rng.choice(IN_STEP)
        return Attempt(at=f"{state}:{c.rng.randint(1, c.nth_limit(state))}:{c.rng.randint(1, 40)}")


class KillAfterDelay(Fault):
    name, weight = "kill-after-delay", 3.0

    def attempt(self, c: Campaign) -> Attempt:
        return Attempt(
            delay=c.rng.uniform(0.05, c.startup + 0.8 * c.work_seconds * max(c.left_share(), 0.2))
        )


FAULTS: tuple[Fault, ...] = (KillAtPoint(), KillInsideStep(), KillAfterDelay(), Fault())


# -- the campaign ----------------------------------------------------------------------


@dataclass
class Summary:
    """What a campaign did, and every invariant violation it found."""

    launches: int = 0
    kills: int = 0
    resumes: int = 0
    moves: int = 0  # runs that ended (done, or incomplete with nothing left unfinished)
    survived: Counter[str] = field(default_factory=Counter)  # fault kind -> kills survived
    app: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    kill_seconds: float = 0.0  # time spent launching and killing (not the set-up or the end)
    seconds: float = 0.0

    def line(self) -> str:
        """The one-line summary the campaign prints."""
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.survived.items()))
        rate = self.kills / max(self.kill_seconds / 60, 1e-9)
        app = ", ".join(f"{k} {n}" for k, n in sorted(self.app.items()))
        return (
            f"campaign: rounds {self.launches}, kills {self.kills}, resumes {self.resumes}, "
            f"moves finished {self.moves}, faults survived {sum(self.survived.values())} "
            f"({kinds}), invariant violations {len(self.violations)}; {rate:.1f} kills/min, "
            f"{self.seconds:.0f} s in all; application writes: {app}"
        )


class Campaign:
    """A mixed fleet, its application and a launcher; :meth:`run` is the campaign."""

    def __init__(
        self,
        workdir: Path,
        sql_urls: dict[str, str],
        s3: Any,
        *,
        rounds: int,
        budget_seconds: float | None,
        seed: int,
        faults: Sequence[Fault] = FAULTS,
        spawn: bool = False,
        ops_per_second: float = 4.0,
        mix: dict[str, float] | None = None,
    ):
        from domicile.datamap import load_map
        from domicile.state import state_engine

        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir, self.rounds, self.budget = workdir, rounds, budget_seconds
        self.rng = random.Random(seed)
        self.faults = list(faults)
        self.bucket = self.rng.choice(S3_CHOICES)
        self.path, urls = build(workdir, sql_urls, s3, self.bucket)
        m = load_map(self.path)
        self.state = state_engine(m.state, m.base_dir)
        self.world = World(self.path, urls)
        self.truth = Truth()
        seed_app = self.rng.randrange(2**32)
        self.writer = Writer(self.world, self.truth, seed_app, ops_per_second, mix)
        for store in LEGACY:
            for _ in range(FAMILIES):
                self.writer.add_family(store)
        for jurisdiction, (home, _media) in HOMES.items():
            for _ in range(2):  # some of the home's own users are there already
                self.writer.add_family(home, jurisdiction)
        self.launcher = Launcher(workdir, spawn)
        self.summary = Summary()
        self.move_points: dict[str, int] = {}  # points of each kind the last whole move made
        self.done_points: Counter[str] = Counter()  # points reached so far in this move
        self.startup = 1.5  # seconds from a launch to its first protocol point (learnt)
        self.work_seconds = 2.0  # seconds of protocol work a whole move takes (learnt)
        self._last_output = ""
        self.stopped_in_a_row = 0  # launches that ended by themselves, unfinished, since progress

    # -- what the faults draw from ---------------------------------------------------

    def nth_limit(self, state: str) -> int:
        """A bound for N at *state*: somewhat below what the move seems to have left.

        Below, so that most launches are killed; the last move's count is only a guess
        for this one, and the clean launches finish the moves.
        """
        left = self.move_points.get(state, 6) - self.done_points[state]
        return max(1, int(left * 0.8))

    def left_share(self) -> float:
        """About how much of the move is left (0..1), by protocol points."""
        total = sum(self.move_points.values()) or 1
        return max(0.0, 1 - sum(self.done_points.values()) / total)

    # -- the loop --------------------------------------------------------------------

    def run(self) -> Summary:
        """Kill, resume, check until *rounds* kills, the budget or a violation; then finish."""
        started = time.monotonic()
        self.writer.start()
        report = started + 60
        try:
            while (
                self.summary.kills < self.rounds
                and not self.summary.violations
                and (self.budget is None or time.monotonic() - started < self.budget)
            ):
                self.step(self.rng.choices(self.faults, [f.weight for f in self.faults])[0])
                self.summary.kill_seconds = time.monotonic() - started
                if time.monotonic() > report:
                    report += 60
                    self.summary.app = Counter(self.writer.counts)
                    self.summary.seconds = time.monotonic() - started
                    print(self.summary.line(), file=sys.stderr, flush=True)
            self.finish()
        finally:
            self.writer.stopped.set()
            self.summary.app = Counter(self.writer.counts)
            self.summary.seconds = time.monotonic() - started
        return self.summary

    def _unfinished(self) -> list[str]:
        from domicile.run.journal import Journal

        return [r.id for r in Journal(self.state).unfinished()]

    def _run_args(self) -> list[str]:
        args = ["run", "--batch-size", BATCH, "-c", str(self.path)]
        unfinished = self._unfinished()
        if unfinished:
            self.summary.resumes += 1
            args += ["--resume", unfinished[-1]]
        return args

    def step(self, fault: Fault) -> None:
        """One launch of ``domicile run`` disturbed by *fault*, then the checks."""
        args = self._run_args()
        attempt = fault.attempt(self)
        share = self.left_share()
        fault.before(self)
        began = time.monotonic()
        rc, output = self.launcher.launch(args, attempt.at, attempt.delay)
        took = time.monotonic() - began
        fault.after(self)
        self.summary.launches += 1
        self._last_output = output
        before = len(self.summary.violations)
        with self.writer.lock:  # the application pauses while the stores are read
            points = self.launcher.points()
            first = points.pop("_first", None)
            self.done_points.update(points)
            if first is not None:
                self.startup = 0.8 * self.startup + 0.2 * (first - began)
            if rc == -signal.SIGKILL:
                self.summary.kills += 1
            elif rc in (0, 4):
                # the work of a whole move, from a launch that did *share* of one
                whole = max(0.0, took - self.startup) / max(share, 0.2)
                self.work_seconds = 0.7 * self.work_seconds + 0.3 * whole
            else:
                self._violation(f"domicile run exited {rc}", output)
            if "Traceback" in output:
                self._violation("domicile printed a traceback", output)
            if self.writer.error is not None and not self.writer.is_alive():
                self._violation(f"the application writer failed: {self.writer.error!r}")
            finished = rc in (0, 4) and not self._unfinished()
            self.summary.moves += finished
            # a run that stops by itself, resumably, again and again is stuck
            self.stopped_in_a_row = 0 if finished else self.stopped_in_a_row + (rc == 4)
            if self.stopped_in_a_row >= STUCK:
                error = next((ln for ln in output.splitlines() if ln.startswith("error:")), "")
                self._violation(f"the move is stuck: {STUCK} resumes in a row stopped: {error}")
            self.check(settled=rc == 0)
            if rc == 0:
                self._command_ok("audit", "verify")
            if rc == -signal.SIGKILL and len(self.summary.violations) == before:
                self.summary.survived[fault.name] += 1
            if finished:  # the next round: new records abroad
                self.move_points, self.done_points = dict(self.done_points), Counter()
                for _ in range(RESEED):  # however large the fleet is
                    self.writer.add_family(self.rng.choice(list(LEGACY)))

    def finish(self) -> None:
        """Stop the application, finish the move undisturbed, check everything strictly."""
        self.writer.stopped.set()
        self.writer.join(120)
        if self.writer.error is not None:
            err = self.writer.error
            self._violation("the application writer failed", "".join(
                traceback.format_exception(type(err), err, err.__traceback__)))  # fmt: skip
        for _ in range(4):
            rc, output = self.launcher.launch(self._run_args(), None, None)
            if "Traceback" in output or rc not in (0, 4):
                self._violation(f"the final run exited {rc}", output)
            if rc == 0 and not self._unfinished():
                break
        else:
            self._violation("four undisturbed runs did not finish the move", output)
        self.check(final=True)
        self._command_ok("audit", "verify")
        self._command_ok("scan")

    def _command_ok(self, *args: str) -> None:
        rc, output = self.launcher.launch([*args, "-c", str(self.path)], None, None)
        if rc != 0:
            self._violation(f"domicile {' '.join(args)} exited {rc}", output)

    def _violation(self, message: str, output: str | None = None) -> None:
        self.summary.violations.append(message)
        lines = (output or self._last_output).splitlines()
        tail = "\n".join([ln for ln in lines if ln[:1] not in BOX][-25:])
        print(f"VIOLATION: {message}\n  work folder: {self.workdir}\n{tail}", file=sys.stderr)

    # -- the checks --------------------------------------------------------------------

    def check(self, *, settled: bool = False, final: bool = False) -> None:
        """Judge every store against what the application wrote (see the module docstring).

        *settled*: a run just ended done, so no stale copy of a deleted record may remain;
        *final*: the move is over, so every record must be exactly where the rule allows.
        """
        from domicile.connectors.identity import MARKER_PREFIX
        from domicile.connectors.objects import TMP_MARK

        rows = self.world.read_rows()
        self._foreign_keys(rows)
        for (table, key), rec in self.truth.rows.items():
            where = {s: row_digest(v) for s, v in rows[table].pop(key, {}).items()}
            self._judge(f"{table} {key}", rec, where, self.truth.home(rec), settled, final)
        for table, left in rows.items():
            for key, places in left.items():
                self._violation(f"unknown record: {table} {key} in {sorted(places)}")
        found: dict[str, dict[str, str]] = defaultdict(dict)
        hidden = []
        for store, keys in self.world.read_objects().items():
            for key, sha in keys.items():
                if any(part.startswith(TMP_MARK) for part in key.split("/")):
                    hidden.append(f"{store}/{key}")
                elif not key.startswith(MARKER_PREFIX):
                    found[key][store] = sha
        for key, rec in self.truth.objects.items():
            home = self.truth.home(rec, objects=True)
            self._judge(f"object {key}", rec, found.pop(key, {}), home, settled, final)
        for key, places in found.items():
            self._violation(f"unknown object: {key} in {sorted(places)}")
        if final and hidden:
            self._violation(f"temporary objects left behind: {hidden[:5]}")

    def _judge(
        self, name: str, rec: Rec, where: dict[str, str], home: str | None, settled: bool,
        final: bool,
    ) -> None:  # fmt: skip
        """One record: *where* maps each store holding it to the digest there."""
        if rec.deleted:
            # Until the run is done a stale copy may wait for domicile's delete: a row's at
            # its home (copied before the application deleted it at the origin), an
            # object's at either end (a blob "lives" beside its row, which may be home
            # already while the object still waits to be deleted at the origin).
            pending = {home, rec.origin} if name.startswith("object ") else {home}
            stale = sorted(s for s in where if settled or final or s not in pending)
            if stale:
                self._violation(f"resurrected: {name}, deleted by the application, is in {stale}")
            return
        if not where:
            self._violation(f"lost: {name} (made in {rec.origin}) is nowhere")
            return
        if rec.versions[-1] not in where.values():
            self._violation(f"lost write: the latest version of {name} is in no store")
        for store, digest in sorted(where.items()):
            if digest not in rec.versions:
                self._violation(f"corrupt: {name} in {store} holds content never written")
            if store not in (rec.origin, home):
                self._violation(f"misplaced: {name} appeared in {store}")
        place = home or rec.origin
        if final and sorted(where) != [place]:
            self._violation(f"not where the rule allows: {name} is in {sorted(where)}, not {place}")

    def _foreign_keys(self, rows: dict[str, dict[int, dict[str, tuple[Any, ...]]]]) -> None:
        for table, (column, parent) in PARENT.items():
            i = COLUMNS[table].index(column)
            for key, places in rows[table].items():
                for store, values in places.items():
                    if store not in rows[parent].get(values[i], {}):
                        self._violation(
                            f"dangling: {table} {key} in {store} names {parent} {values[i]}, "
                            "not there"
                        )

    def close(self) -> None:
        """Stop the fork server and the engines."""
        self.launcher.close()
        self.world.close()
        self.state.dispose()


def run_campaign(
    workdir: Path,
    sql_urls: dict[str, str],
    s3: Any,
    *,
    rounds: int,
    budget_seconds: float | None = None,
    seed: int = 0,
    spawn: bool = False,
    mix: dict[str, float] | None = None,
) -> Summary:
    """Build the fleet under *workdir* and run a campaign of up to *rounds* kills.

    *mix* overrides weights of the application's operations (campaign_app.OPS).
    """
    campaign = Campaign(
        workdir, sql_urls, s3, rounds=rounds, budget_seconds=budget_seconds, seed=seed,
        spawn=spawn, mix=mix,
    )  # fmt: skip
    try:
        return campaign.run()
    finally:
        campaign.close()


def main(argv: list[str]) -> int:
    """The command line: make databases and an S3 server, run a campaign, print its summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1000, help="kills to survive")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--budget-seconds", type=float, default=None,
                        help="stop starting new kills after this long")  # fmt: skip
    parser.add_argument("--spawn", action="store_true", help="start crashrun.py per launch")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--mix", default="", help="application weights: update_post=0,...")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    mix = {k: float(v) for k, v in (kv.split("=") for kv in args.mix.split(",") if kv)}
    from conftest import MYSQL, POSTGRES, DatabaseFactory
    from fixtures_s3 import start_weed

    workdir = Path(tempfile.mkdtemp(prefix="domicile-campaign-"))
    servers = {"postgresql": DatabaseFactory(POSTGRES, "postgresql"),
               "mysql": DatabaseFactory(MYSQL, "mysql")}  # fmt: skip
    for server in servers.values():
        server.ping()
    weed = start_weed(workdir)
    try:
        urls = {
            name: f"sqlite:///{workdir / name}.db" if kind == "sqlite" else servers[kind].new("cmp")
            for name, kind, *_ in SQL_STORES
        }
        summary = run_campaign(workdir / "fleet", urls, weed, rounds=args.rounds,
                               budget_seconds=args.budget_seconds, seed=seed,
                               spawn=args.spawn, mix=mix)  # fmt: skip
    finally:
        weed.stop()
        for server in servers.values():
            server.drop_all()
    print(f"seed {seed}")
    print(summary.line())
    for violation in summary.violations:
        print(f"  {violation}")
    if summary.violations or args.keep:
        print(f"work folder kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if summary.violations else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
