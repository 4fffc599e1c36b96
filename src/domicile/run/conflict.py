"""The conflict policy, as one pure function: what to do with a record already at home.

A copy finds, at home, a record under the key it is about to write.  What
happens depends on what is there and on what the journal says domicile wrote
there before — never on a guess:

- nothing at home: ``insert``;
- exactly the content being copied: ``already`` (a resumed or repeated copy);
- content that *this source* copied there earlier (the source row changed
  after its copy): ``refresh`` — domicile's own stale copy;
- content that *another source* copied there (two shards with one key): a
  ``conflict`` whatever ``on_conflict`` says — overwriting or keeping home
  would delete one of two different records everywhere;
- content domicile never wrote: the map's ``on_conflict`` decides —
  ``conflict`` (fail), ``keep-home`` or ``overwrite``.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from domicile.run.journal import Copy


class Decision(StrEnum):
    """What a copy does with one record."""

    INSERT = "insert"
    ALREADY = "already"
    REFRESH = "refresh"
    KEEP_HOME = "keep-home"
    OVERWRITE = "overwrite"
    CONFLICT = "conflict"
    CONFLICT_OTHER_SOURCE = "conflict-other-source"


POLICIES = ("fail", "keep-home", "overwrite")


def decide(
    at_home: str | None,
    copying: str,
    copies: Iterable[Copy],
    source: str,
    on_conflict: str,
) -> Decision:
    """The decision for one record.

    *at_home* is the digest of the record at home (None when absent),
    *copying* the digest it must have at home after this copy, *copies* the
    journalled copies of this key to this home, *source* the store this copy
    reads from, *on_conflict* the map's policy.
    """
    if on_conflict not in POLICIES:
        raise ValueError(f"unknown on_conflict policy {on_conflict!r}")
    if at_home is None:
        return Decision.INSERT
    if at_home == copying:
        return Decision.ALREADY
    written = [c for c in copies if c.digest_at_home == at_home or c.digest == at_home]
    if any(c.source == source for c in written):
        return Decision.REFRESH
    if written:
        return Decision.CONFLICT_OTHER_SOURCE
    if on_conflict == "keep-home":
        return Decision.KEEP_HOME
    if on_conflict == "overwrite":
        return Decision.OVERWRITE
    return Decision.CONFLICT
