"""Objects that move with their rows (``blobs: {column: ...}``).

Within a row's batch: the object is located when the batch is formed (its
store, key and version are journalled with the row), streamed to the home
object store of the row's jurisdiction under the same key *before* the row is
written at home (its home and SHA-256 journalled before its bytes go:
:meth:`BlobMover.planned`), verified there by SHA-256 with the row, and deleted
at the source only after the row was — and only if it is unchanged since the copy
and no row still at the source names it (:mod:`domicile.run.blob_refs`).  A
column holding a full URL is rewritten to the new place in the same
transaction that writes the row at home.  Objects that rows which do not move
name are moved by :mod:`domicile.run.home_blobs` with the same methods.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

from domicile.blobs import BlobLocator, is_url
from domicile.connectors.objects import ObjectStore
from domicile.errors import ConfigError, ConflictError, VerificationError
from domicile.model import Dataset
from domicile.run.blob_refs import Moving, named_keys

if TYPE_CHECKING:
    from domicile.run.context import RunContext

RECOPY_ATTEMPTS = 3  # an object the application keeps overwriting is left for the next run


class BlobMover:
    """Copies, verifies and deletes the objects a dataset's rows name."""

    def __init__(self, ctx: RunContext, ds: Dataset):
        assert ds.blobs is not None
        self.ctx = ctx
        self.ds = ds
        self.column = ds.blobs.column
        self.locator = BlobLocator(ctx.fleet, ds, listing=False)
        self.counts = {"blobs_copied": 0, "blob_bytes": 0, "blobs_orphaned": 0}

    def _store(self, name: str) -> ObjectStore:
        return self.ctx.fleet.objects[name]

    def home_store(self, sql_target: str) -> str:
        """The object store home of the jurisdiction whose SQL home is *sql_target*."""
        for j in self.ctx.map.jurisdictions.values():
            if sql_target in j.home:
                for name in j.home:
                    if self.ctx.map.stores[name].kind == "objects":
                        return name
                raise ConfigError(
                    f"jurisdiction {j.name} has no object store in its home for the objects "
                    f"of dataset {self.ds.name}",
                    where=f"jurisdictions.{j.name}.home",
                    hint="add a file:// or s3:// store to home",
                )
        raise ConfigError(f"{sql_target} is no jurisdiction's home")

    def describe(self, value: Any) -> dict[str, Any] | None:
        """Where the object *value* names is now (None: it exists nowhere — an orphan)."""
        found = self.locator.locate(value)
        if found is None:
            if value is not None and value != "":
                self.counts["blobs_orphaned"] += 1
            return None
        store, key, info = found
        return {
            "store": store.name,
            "key": key,
            "version": info.version,
            "size": info.size,
            "url": is_url(str(value)),
        }

    def home_value(self, blob: dict[str, Any], sql_target: str) -> str:
        """The column's value at home: the key, or the object's new URL."""
        home = self._store(self.home_store(sql_target))
        return home.url_for(blob["key"]) if blob["url"] else str(blob["key"])

    def planned(self, blob: dict[str, Any], home_name: str) -> dict[str, Any] | None:
        """The blob as journalled before its bytes go to *home_name*: home and SHA-256 set.

        The SHA-256 is the source object's, read now.  It is what domicile's
        own copies are known by (:meth:`_already_home`, :meth:`remove_home_copy`),
        so journalling it *before* the copy keeps a copy that a kill interrupts
        domicile's own on the resume: refreshed if the object changed, removed
        if its row is gone — never taken for the application's.  What an
        earlier, killed attempt may have left at home stays known as well
        (``earlier``).  None: the application deleted the object since the
        batch was formed; a copy an earlier attempt made of it is removed.
        """
        if blob["store"] == home_name:
            return dict(blob, home=home_name)  # already home: no bytes move
        source = self._store(blob["store"])
        if source.stat(blob["key"]) is None:
            self.remove_home_copy(blob)  # only if home holds exactly domicile's copy
            return None
        sha = source.sha256(blob["key"])
        ours = own_hashes(blob) if blob.get("home") == home_name else set()
        out = {k: v for k, v in blob.items() if k not in ("earlier", "kept_home")}
        out.update(home=home_name, sha256=sha)
        earlier = sorted(ours - {sha})
        if earlier:
            out["earlier"] = earlier
        return out

    def copy(self, blob: dict[str, Any], sql_target: str) -> dict[str, Any]:
        """Stream the object to the home of the row's SQL home *sql_target* (same key).

        Returns the blob with its SHA-256 (see :meth:`copy_to`).
        """
        return self.copy_to(blob, self.home_store(sql_target))

    def copy_to(self, blob: dict[str, Any], home_name: str) -> dict[str, Any]:
        """Stream the object to object store *home_name* (same key); returns it with its SHA-256.

        An object already at home under the key is never overwritten silently
        (see :meth:`_already_home`).
        """
        # once this returns, home holds exactly what the result says: earlier copies are gone
        out = {k: v for k, v in blob.items() if k != "earlier"}
        out["home"] = home_name
        if blob["store"] == home_name:
            out["sha256"] = self._store(home_name).sha256(blob["key"])
            return out
        if self._store(home_name).stat(blob["key"]) is not None:
            decided = self._already_home(blob, home_name)
            if decided is not None:
                return dict(out, **decided)
        result = self._store(home_name).copy_from(
            self._store(blob["store"]), blob["key"], blob["key"]
        )
        out["sha256"] = result.sha256
        out["version"] = result.source_version or blob["version"]
        self.counts["blobs_copied"] += 1
        self.counts["blob_bytes"] += result.size
        self.ctx.progress("bytes", self.ds.name, result.size)
        return out

    def _already_home(self, blob: dict[str, Any], home_name: str) -> dict[str, Any] | None:
        """Decide about an object that is already at home; None: copy over it.

        The same bytes: nothing to copy (a resumed copy).  Different bytes
        that domicile copied there itself (this blob's journalled hashes, or
        another row's in the journal): a stale copy, replaced.  Otherwise the
        application wrote it there (new writes routed home first): a conflict
        that ``on_conflict`` decides, as for rows.
        """
        home, key = self._store(home_name), blob["key"]
        at_home = home.sha256(key)
        if at_home == self._store(blob["store"]).sha256(key):
            return {"sha256": at_home}
        strategy = self.ctx.map.on_conflict
        if strategy == "overwrite" or at_home in own_hashes(blob):
            return None
        if self._copied_before(key, home_name, at_home):
            return None
        if strategy == "keep-home":
            return {"sha256": at_home, "kept_home": True}
        raise ConflictError(
            f"object {key} (named by {self.ds.name}.{self.column}) is already at {home_name} "
            "with different content; nothing was overwritten or deleted",
            where=f"dataset {self.ds.name}",
            hint="compare both; set on_conflict: keep-home or overwrite in the map, then "
            "resume the run",
        )

    def _copied_before(self, key: str, home_name: str, digest: str) -> bool:
        """True when a journalled blob says domicile copied exactly these bytes of *key* home.

        The batches relied upon have their MACs checked: a forged journal row
        cannot make an object at home look like domicile's own copy.
        """
        return self.ctx.journal.blob_copied(self.ds.name, key, home_name, digest)

    def verify(self, blob: dict[str, Any]) -> None:
        """The object at home must have the SHA-256 of what was copied."""
        home = self._store(blob["home"])
        if home.stat(blob["key"]) is None:
            raise VerificationError(
                f"object {blob['key']} is missing at {home.name}",
                hint="nothing was deleted; resume the run to copy it again",
            )
        actual = home.sha256(blob["key"])
        if actual != blob.get("sha256"):
            raise VerificationError(
                f"object {blob['key']} at {home.name} has SHA-256 {actual[:12]}…, "
                f"copied {str(blob.get('sha256'))[:12]}…",
                hint="nothing was deleted; resume the run to copy it again",
            )

    def delete_sources(
        self,
        blobs: Iterable[dict[str, Any]],
        *,
        sql_stores: Collection[str] | None,
        moving: Moving = (),
    ) -> list[str]:
        """:meth:`delete_source` for each blob, but keep those a row still names.

        Before any source object goes, the rows in *sql_stores* (None: every
        SQL store) are asked set-wise, per source object store, whether they
        still name it (:func:`~domicile.run.blob_refs.named_keys`; *moving*
        are the rows whose bare keys the home copies serve).  A named object
        stays: ``shared`` (nothing lost; the home copy stays too).
        """
        todo = list(blobs)
        by_store: dict[str, list[str]] = {}
        for b in todo:
            if b["store"] != b.get("home"):  # an object already home is never deleted
                by_store.setdefault(b["store"], []).append(b["key"])
        named = {
            (store, key)
            for store, keys in by_store.items()
            for key in named_keys(
                self.ctx, self._store(store), keys, sql_stores=sql_stores, moving=moving
            )
        }
        return [
            "shared" if (b["store"], b["key"]) in named else self.delete_source(b) for b in todo
        ]

    def delete_source(self, blob: dict[str, Any]) -> str:
        """Delete the source object if unchanged since the copy; copy it again if it changed.

        Returns ``deleted``, ``gone`` (no longer there), ``changed`` (the
        application kept overwriting it; left for the next run) or
        ``home-lost`` (the home copy is gone: the source object stays).
        """
        if blob["store"] == blob.get("home"):
            return "deleted"
        # the home copy, checked again right before the source object goes: it
        # must still be there (with the copied size unless home's own object won)
        at_home = self._store(blob["home"]).stat(blob["key"])
        if at_home is None or (
            not blob.get("kept_home")
            and blob.get("size") is not None
            and at_home.size != blob["size"]
        ):
            return "home-lost"
        src = self._store(blob["store"])
        version = blob["version"]
        if blob.get("kept_home"):  # home's own object won: never copy over it
            if src.delete_if_unchanged(blob["key"], version):
                return "deleted"
            return "gone" if src.stat(blob["key"]) is None else "changed"
        for _ in range(RECOPY_ATTEMPTS):
            if src.delete_if_unchanged(blob["key"], version):
                return "deleted"
            info = src.stat(blob["key"])
            if info is None:
                return "gone"
            # overwritten after the copy: the new content goes home too, then delete it
            result = self._store(blob["home"]).copy_from(src, blob["key"], blob["key"])
            self.verify(dict(blob, sha256=result.sha256))
            version = result.source_version or info.version
        return "changed"

    def remove_home_copy(self, blob: dict[str, Any]) -> None:
        """Remove an object domicile copied home for a row that is not moving after all."""
        home_name = blob.get("home")
        ours = own_hashes(blob)
        if not home_name or home_name == blob["store"] or not ours:
            return
        home = self._store(home_name)
        info = home.stat(blob["key"])
        if info is not None and home.sha256(blob["key"]) in ours:
            home.delete_if_unchanged(blob["key"], info.version)


def own_hashes(blob: dict[str, Any]) -> set[str]:
    """The SHA-256s of the bytes domicile itself copied home for *blob* (as journalled).

    A ``kept_home`` blob's SHA-256 is the application's object at home (it won
    the conflict), never a copy domicile made.
    """
    out = set(blob.get("earlier") or ())
    if blob.get("sha256") and not blob.get("kept_home"):
        out.add(blob["sha256"])
    return out
