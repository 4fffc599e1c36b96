"""The census of objects: object datasets and the blobs SQL rows name.

Objects are counted like rows — records (objects) and bytes per
(jurisdiction, store, dataset), violating or not — with the same placement
rule.  An object dataset's owner is read from each key; a blob follows the
owner (and the exceptions) of the row that names it and is judged at the
object store it sits in.  Blob cells are named ``dataset.column`` (for
example ``videos.media_key``).  A blob column naming an object that exists
nowhere is reported as an orphan of that name; its row still moves.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from domicile.blobs import BlobLocator, coerce_owner, owner_pattern
from domicile.fleet import Fleet, Location
from domicile.model import Dataset
from domicile.placement import classify

if TYPE_CHECKING:
    from domicile.connectors.objects import ObjectInfo
    from domicile.directory import Directory
    from domicile.scan import Census, WaiverUse

PAGE = 5000  # rows per page when reading blob columns


def blob_cell_name(ds: Dataset) -> str:
    """The census name of a dataset's blobs: ``dataset.column``."""
    assert ds.blobs is not None
    return f"{ds.name}.{ds.blobs.column}"


def unconditional_waivers(fleet: Fleet, ds: Dataset) -> frozenset[int]:
    """Exceptions of an object dataset: only those without a row filter can apply."""
    return frozenset(w.index for w in fleet.map.exceptions if w.dataset == ds.name and not w.where)


def scan_object_dataset(
    fleet: Fleet,
    census: Census,
    directory: Directory,
    uses: dict[int, WaiverUse],
    ds: Dataset,
    today: dt.date,
) -> None:
    """Count an object dataset's objects in every object store it may live in."""
    from domicile.scan import add

    assert ds.objects is not None
    m = fleet.map
    glob, rx = owner_pattern(ds.objects)
    id_col = fleet.subject_id_column()
    flags = unconditional_waivers(fleet, ds)
    for store in fleet.object_stores_for(ds):
        model = m.stores[store.name]
        # an owner split over two pages is counted in both: the counts add up
        for groups in _owner_pages(store.list(pattern=glob), rx, id_col):
            directory.resolve(groups)
            for owner, (n, nbytes) in groups.items():
                verdict = classify(m, model, ds, [directory.country(owner)], flags, today)
                add(census, uses, verdict, store.name, ds.name, n, nbytes)


def _owner_pages(
    listing: Iterable[ObjectInfo], rx: re.Pattern[str], id_col: Any
) -> Iterator[dict[Any, list[int]]]:
    """(objects, bytes) per owner of the listed objects, at most :data:`PAGE` owners a page
    (memory follows the page, not the number of owners)."""
    groups: dict[Any, list[int]] = defaultdict(lambda: [0, 0])
    for info in listing:
        match = rx.fullmatch(info.key)
        if match is None:
            continue
        g = groups[coerce_owner(match.group("owner"), id_col)]
        g[0] += 1
        g[1] += info.size
        if len(groups) >= PAGE:
            yield groups
            groups = defaultdict(lambda: [0, 0])
    if groups:
        yield groups


def scan_blobs(
    fleet: Fleet,
    census: Census,
    directory: Directory,
    ds: Dataset,
    loc: Location,
    today: dt.date,
    locator: BlobLocator | None = None,
) -> None:
    """Count the objects a SQL dataset's rows in *loc* name, by their owners' rule.

    Pass one *locator* for every location of the dataset: it lists each
    candidate object store once, where a fresh one per location lists them all
    again for every SQL store holding the dataset.
    """
    from domicile.scan import add, annotate, matched_waivers, owner_countries

    assert ds.blobs is not None
    m = fleet.map
    name = blob_cell_name(ds)
    column = loc.table.c[ds.blobs.column]
    local_dir = fleet.location(m.subjects.dataset, loc.store.name)
    a = annotate(m, loc, ds, local_dir)
    locator = locator or BlobLocator(fleet, ds, listing=True)
    q = (
        sa.select(column.label("_dm_blob"), *a.columns)
        .select_from(a.from_)
        .where(column.is_not(None))
    )
    with loc.store.connect(f"reading {ds.name}.{ds.blobs.column}") as conn:
        result = conn.execution_options(yield_per=PAGE).execute(q).mappings()
        for page in result.partitions(PAGE):
            directory.resolve(r[f"_dm_u{k}"] for r in page for k in range(a.owners))
            for r in page:
                found = locator.locate(r["_dm_blob"])
                if found is None:
                    census.orphans[(loc.store.name, name)] += 1
                    continue
                store, _key, info = found
                countries = owner_countries(r, a.owners, directory)
                verdict = classify(
                    m, m.stores[store.name], ds, countries, matched_waivers(r, a.waivers), today
                )
                add(census, None, verdict, store.name, name, 1, info.size)
