"""The data map loader refuses maps that would lose data, and survives hostile YAML.

Every refusal is a ConfigError (exit 2) naming the file, the line and the key;
nothing else may escape :func:`domicile.datamap.load_map` — the property tests
at the end feed it random text and random, wrongly wired maps.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tally
from domicile.blobs import owner_pattern
from domicile.datamap import load_map
from domicile.errors import ConfigError
from domicile.mapcheck import _common_key, _tokens
from domicile.model import DataMap
from domicile.yamlsafe import MAX_ALIASES, MAX_BYTES, MAX_DEPTH

# Line numbers below are those of this text: 1 version ... 10 posts.
MAP = """\
version: 1
stores:
  sg: {url: "sqlite:///sg.db", labels: {country: SG}}
  us: {url: "sqlite:///us.db", labels: {country: US}}
subjects: {dataset: users}
jurisdictions:
  US: {countries: [US], allowed: {country: US}, home: [us]}
datasets:
  users: {table: users, key: [id], owner: id}
  posts: {table: posts, key: [id], owner: user_id}
"""

# The same fleet with two object stores and an object dataset (line 12: avatars).
MEDIA = """\
version: 1
stores:
  sg: {url: "sqlite:///sg.db", labels: {country: SG}}
  us: {url: "sqlite:///us.db", labels: {country: US}}
  media-sg: {url: "file://media/sg", labels: {country: SG}}
  media-us: {url: "file://media/us", labels: {country: US}}
subjects: {dataset: users}
jurisdictions:
  US: {countries: [US], allowed: {country: US}, home: [us, media-us]}
datasets:
  users: {table: users, key: [id], owner: id}
  avatars: {objects: "avatars/{owner}/*"}
"""


def _write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "domicile.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _load(tmp_path: Path, text: str | bytes) -> DataMap:
    return load_map(_write(tmp_path, text), env={})


def _refused(tmp_path: Path, text: str | bytes) -> str:
    """The error text (where: message + hint) of a map that must be refused."""
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert info.value.exit_code == 2
    return str(info.value)


def _edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def test_the_base_maps_load(tmp_path: Path) -> None:
    assert set(_load(tmp_path, MAP).datasets) == {"users", "posts"}
    assert _load(tmp_path, MEDIA).datasets["avatars"].objects == "avatars/{owner}/*"


# --------------------------------------------------------------------------
# 1. Duplicate keys


def test_dataset_defined_twice_names_both_lines(tmp_path: Path) -> None:
    out = _refused(tmp_path, MAP + "  users: {table: people, owner: id}\n")
    assert "domicile.yaml:11 datasets.users: defined twice (first at line 9)" in out
    assert "hint:" in out


def test_store_defined_twice(tmp_path: Path) -> None:
    text = _edit(MAP, "subjects:", '  sg: {url: "sqlite:///other.db"}\nsubjects:')
    assert "domicile.yaml:5 stores.sg: defined twice (first at line 3)" in _refused(tmp_path, text)


def test_field_repeated_in_a_block_mapping(tmp_path: Path) -> None:
    text = _edit(MAP, "  posts: {table: posts, key: [id], owner: user_id}\n", "")
    text += "  posts:\n    table: posts\n    owner: user_id\n    table: posts_archive\n"
    out = _refused(tmp_path, text)
    assert "domicile.yaml:13 datasets.posts.table: defined twice (first at line 11)" in out


def test_field_repeated_in_a_flow_mapping_and_a_list_item(tmp_path: Path) -> None:
    text = _edit(MAP, "{country: SG}", "{country: SG, country: US}")
    assert "domicile.yaml:3 stores.sg.labels.country: defined twice" in _refused(tmp_path, text)
    text = MAP + "exceptions:\n  - dataset: posts\n    dataset: users\n"
    assert "domicile.yaml:13 exceptions.[0].dataset: defined twice (first at line 12)" in (
        _refused(tmp_path, text)
    )


def test_keys_equal_as_python_values_collide(tmp_path: Path) -> None:
    # 1 and true are one dict key: YAML would keep only the second
    out = _refused(tmp_path, MAP + "x: {1: a, true: b}\n")
    assert "domicile.yaml:11 x.true: defined twice" in out


def test_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    text = _edit(
        MAP,
        '  sg: {url: "sqlite:///sg.db", labels: {country: SG}}',
        '  sg: {url: "sqlite:///sg.db", labels: &sg {country: SG, tier: gold}}\n'
        '  sg2: {url: "sqlite:///sg2.db", labels: {<<: *sg, tier: silver}}',
    )
    m = _load(tmp_path, text)
    assert dict(m.stores["sg2"].labels) == {"country": "SG", "tier": "silver"}
    # a key from the merge that is overridden is not "defined twice"; lines still point home
    assert m.lines[("stores", "sg2")] == 4


# --------------------------------------------------------------------------
# 2. One table, one dataset; one object, one dataset


def test_two_datasets_of_one_table_without_stores(tmp_path: Path) -> None:
    out = _refused(tmp_path, MAP + "  posts2: {table: posts, key: [id], owner: author_id}\n")
    assert "domicile.yaml:11 datasets.posts2.table: table 'posts' is also the table of " in out
    assert "dataset 'posts' (line 10)" in out
    assert "hint: declare one dataset per table (use owners: [...] for several owners)" in out


def test_two_datasets_of_one_table_with_intersecting_stores(tmp_path: Path) -> None:
    text = _edit(MAP, "owner: user_id}", "owner: user_id, stores: [sg, us]}")
    text += "  Posts_again: {table: POSTS, owner: author_id, stores: [sg]}\n"
    out = _refused(tmp_path, text)
    assert "domicile.yaml:11 datasets.Posts_again.table: table 'POSTS'" in out
    assert "both can live in store sg" in out


def test_disjoint_stores_still_meet_at_home(tmp_path: Path) -> None:
    # records moved home live there whatever stores: says, so both datasets reach 'us'
    text = _edit(MAP, "owner: user_id}", "owner: user_id, stores: [sg]}")
    text = _edit(
        text,
        '  us: {url: "sqlite:///us.db"',
        '  ca: {url: "sqlite:///ca.db"}\n  us: {url: "sqlite:///us.db"',
    )
    text += "  posts_ca: {table: posts, owner: user_id, stores: [ca]}\n"
    assert "both can live in store us" in _refused(tmp_path, text)


def test_one_table_in_disjoint_stores_without_homes_is_allowed(tmp_path: Path) -> None:
    text = _edit(
        MAP,
        "jurisdictions:\n  US: {countries: [US], allowed: {country: US}, home: [us]}\n",
        "jurisdictions: {}\n",
    )
    text = _edit(text, "owner: user_id}", "owner: user_id, stores: [sg]}")
    text += "  posts_us: {table: posts, owner: author_id, stores: [us]}\n"
    assert set(_load(tmp_path, text).datasets) == {"users", "posts", "posts_us"}


def test_identical_object_patterns(tmp_path: Path) -> None:
    out = _refused(tmp_path, MEDIA + '  avatars2: {objects: "avatars/{owner}/*"}\n')
    assert (
        "domicile.yaml:13 datasets.avatars2.objects: object pattern 'avatars/{owner}/*' is " in out
    )
    assert "also the pattern of dataset 'avatars' (line 12)" in out


def test_overlapping_object_patterns_name_a_common_key(tmp_path: Path) -> None:
    out = _refused(tmp_path, MEDIA + '  jpegs: {objects: "avatars/{owner}/*.jpg"}\n')
    assert "overlaps the pattern of dataset 'avatars'" in out
    key = re.search(r"both match key '([^']*)'", out)
    assert key is not None
    for pattern in ("avatars/{owner}/*", "avatars/{owner}/*.jpg"):
        assert owner_pattern(pattern)[1].fullmatch(key.group(1))


def test_disjoint_object_patterns_are_allowed(tmp_path: Path) -> None:
    text = MEDIA + '  thumbs: {objects: "avatars/{owner}/thumbs/*"}\n'
    text += '  docs: {objects: "docs/{owner}.pdf"}\n'
    assert {"thumbs", "docs"} <= set(_load(tmp_path, text).datasets)


def test_object_patterns_too_complex_to_compare_are_refused(tmp_path: Path) -> None:
    text = MEDIA + '  a2: {objects: "' + "*a" * 500 + '{owner}"}\n'
    text += '  b2: {objects: "' + "*b" * 500 + '{owner}"}\n'
    start = time.perf_counter()
    assert "too many or too complex object patterns" in _refused(tmp_path, text)
    assert time.perf_counter() - start < 5


def test_object_pattern_must_name_the_owner_once(tmp_path: Path) -> None:
    text = MEDIA + '  both: {objects: "x/{owner}/{owner}/*"}\n'
    assert "must name the owner once" in _refused(tmp_path, text)


_GLOB = st.lists(st.sampled_from(["a", "b", "/", "*", "**", "?"]), max_size=3).map("".join)
_PROBES = ["".join(p) for n in range(1, 6) for p in itertools.product("ab/x", repeat=n)]


@given(_GLOB, _GLOB, _GLOB, _GLOB)
@settings(max_examples=100, deadline=None)
def test_a_common_key_matches_both_patterns(a1: str, a2: str, b1: str, b2: str) -> None:
    a, b = a1 + "{owner}" + a2, b1 + "{owner}" + b2
    key = _common_key(_tokens(a), _tokens(b), [10**6])
    rx_a, rx_b = owner_pattern(a)[1], owner_pattern(b)[1]
    if key is not None:
        assert rx_a.fullmatch(key) and rx_b.fullmatch(key)
    else:  # and no short key matches both
        assert not any(rx_a.fullmatch(k) and rx_b.fullmatch(k) for k in _PROBES)


# --------------------------------------------------------------------------
# 3. Hostile YAML


def test_file_larger_than_the_limit(tmp_path: Path) -> None:
    out = _refused(tmp_path, "#" * (MAX_BYTES + 1))
    assert "larger than 4 MiB" in out and "domicile.yaml" in out


def test_nesting_too_deep(tmp_path: Path) -> None:
    out = _refused(tmp_path, "a: " + "[" * (MAX_DEPTH + 10) + "]" * (MAX_DEPTH + 10) + "\n")
    assert "domicile.yaml:1 a.[0]" in out and f"nested deeper than {MAX_DEPTH} levels" in out


def test_nesting_too_deep_through_aliases(tmp_path: Path) -> None:
    lines = ["l0: &l0 [x]"] + [f"l{i}: &l{i} [[[[[[[[[[*l{i - 1}]]]]]]]]]]" for i in range(1, 10)]
    out = _refused(tmp_path, "\n".join(lines) + "\n")
    assert "(aliases followed)" in out


def test_billion_laughs_is_refused_fast(tmp_path: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    path = _write(tmp_path, "\n".join(lines) + "\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than"):
        load_map(path, env={})
    assert time.perf_counter() - start < 0.5


def test_too_many_aliases(tmp_path: Path) -> None:
    text = "a: &a x\nb: [" + ",".join(["*a"] * (MAX_ALIASES + 1)) + "]\n"
    start = time.perf_counter()
    out = _refused(tmp_path, text)
    assert f"more than {MAX_ALIASES:,} aliases" in out and "domicile.yaml:2 b." in out
    assert time.perf_counter() - start < 1.0


def test_recursive_alias(tmp_path: Path) -> None:
    out = _refused(tmp_path, MAP + "x: &loop {self: *loop}\n")
    assert "domicile.yaml:11 x.self: alias *loop is used inside the node it names" in out


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            b"\x7fELF\x02\x01\x01\x00\x00\x00",
            "is a binary file, not UTF-8 text (NUL byte at byte offset 7)",
        ),
        (
            "version: 1\nname: caf\xe9\n".encode("latin-1"),
            "is not UTF-8 text (byte 0xe9 at byte offset 20)",
        ),
        ("version: 1\n".encode("utf-16"), "not UTF-8 text (a UTF-16 byte order mark"),
    ],
    ids=["binary", "latin-1", "utf-16"],
)
def test_binary_and_non_utf8_files(tmp_path: Path, raw: bytes, expected: str) -> None:
    out = _refused(tmp_path, raw)
    assert expected in out and str(tmp_path / "domicile.yaml") in out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "domicile.yaml: the data map is empty"),
        ("# only a comment\n\n", "domicile.yaml: the data map is empty"),
        ("- version: 1\n", "domicile.yaml:1: the data map must be a YAML mapping (found list)"),
        ("just words\n", "the data map must be a YAML mapping (found str)"),
        (
            MAP + "---\nversion: 1\n",
            "domicile.yaml:11: the data map must be a single YAML document",
        ),
        ("version: 1\nstores: {a\x07: 1}\n", "domicile.yaml:2: control character U+0007"),
        (
            _edit(MAP, "version: 1", "version: 1\nwhen: 2024-02-30"),
            "domicile.yaml:2: cannot read the value '2024-02-30'",
        ),
        ("version: " + "9" * 5000 + "\n", "domicile.yaml:1: cannot read the value"),
        (
            "version: !!python/object:os.system x\n",
            "domicile.yaml:1: could not determine a constructor",
        ),
        ("version: [1\n", "domicile.yaml:2: YAML syntax error"),
    ],
    ids=[
        "empty",
        "comments",
        "list",
        "scalar",
        "two-docs",
        "control",
        "date",
        "bigint",
        "tag",
        "syntax",
    ],
)
def test_documents_that_are_not_a_data_map(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in _refused(tmp_path, text)


def test_a_device_or_a_folder_as_the_map(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read data map"):
        load_map(tmp_path)
    if Path("/dev/zero").exists():  # read with a bound: never fills the memory
        with pytest.raises(ConfigError, match="larger than 4 MiB"):
            load_map("/dev/zero")


# --------------------------------------------------------------------------
# 4. Values that must be refused


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "countries: [US]",
            "countries: []",
            "domicile.yaml:7 jurisdictions.US.countries: countries: [] names no country",
        ),
        (
            "allowed: {country: US}",
            "allowed: {}",
            "domicile.yaml:7 jurisdictions.US.allowed: an empty selector {} matches every store",
        ),
        (
            "allowed: {country: US}",
            "allowed: [{country: US}, {}]",
            "an empty selector {} matches every store",
        ),
        (
            "allowed: {country: US}",
            "allowed: []",
            "domicile.yaml:7 jurisdictions.US.allowed: allowed: [] allows no store",
        ),
        (
            "home: [us]",
            "home: []",
            "domicile.yaml:7 jurisdictions.US.home: home must name at least one store",
        ),
        (
            "owner: user_id}",
            "owner: user_id, stores: []}",
            "domicile.yaml:10 datasets.posts.stores: stores: [] names no store",
        ),
        (
            "key: [id], owner: user_id",
            "key: [], owner: user_id",
            "domicile.yaml:10 datasets.posts.key: key: [] names no column",
        ),
    ],
    ids=["countries", "allowed-{}", "allowed-[{}]", "allowed-[]", "home-[]", "stores-[]", "key-[]"],
)
def test_empty_values_are_refused(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert expected in _refused(tmp_path, _edit(MAP, old, new))


def test_home_without_an_object_store_when_objects_must_move(tmp_path: Path) -> None:
    out = _refused(tmp_path, _edit(MEDIA, "home: [us, media-us]", "home: [us]"))
    assert "domicile.yaml:9 jurisdictions.US.home: home names no object store" in out
    assert "dataset 'avatars'" in out
    out = _refused(tmp_path, _edit(MEDIA, "home: [us, media-us]", "home: [media-us]"))
    assert "home names no SQL store, but dataset 'users'" in out


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "oracle://scott:tiger@db/orcl",
            "store us: unsupported URL scheme 'oracle' "
            "(supported: sqlite, postgresql, mysql, mariadb, file, s3)",
        ),
        ("us.db", "store us: the URL has no scheme"),
        (
            "postgresql://app:s3cret@db:port/app",
            "store us: URL 'postgresql://app:***@db:port/app' is not a database URL",
        ),
        ("sqlite://", "store us: an in-memory SQLite database loses everything"),
        ("sqlite:///:memory:", "store us: an in-memory SQLite database"),
        ("sqlite:////dev/shm/us.db", "is under /dev"),
        ("s3://", "store us: the s3 URL names no bucket"),
        ("file://", "store us: folder"),
        ("sqlite:///us\\x00.db", "control character"),
    ],
)
def test_store_urls_that_are_refused(tmp_path: Path, url: str, expected: str) -> None:
    text = _edit(MAP, '"sqlite:///us.db"', f'"{url}"')
    out = _refused(tmp_path, text)
    assert expected in out and "domicile.yaml:4 stores.us.url" in out
    assert "s3cret" not in out


def test_two_names_for_one_store(tmp_path: Path) -> None:
    text = _edit(MAP, '"sqlite:///us.db"', '"sqlite:///./sg.db"')
    out = _refused(tmp_path, text)
    assert "domicile.yaml:4 stores.us.url: store us is the same place as store sg (line 3)" in out


def test_a_dataset_narrowed_to_a_store_of_the_wrong_kind(tmp_path: Path) -> None:
    text = _edit(
        MEDIA,
        "{table: users, key: [id], owner: id}",
        "{table: users, owner: id, stores: [media-sg]}",
    )
    assert "stores names 'media-sg', which is an object store" in _refused(tmp_path, text)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (
            "mysql://u@h/db",
            "state store: unsupported URL scheme 'mysql' (supported: sqlite, postgresql)",
        ),
        ("'not a url at all'", "state store: 'not a url at all' is not a URL"),
        (
            "'postgresql://u@h:abc/db'",
            "state store: URL 'postgresql://u@h:abc/db' is not a database URL",
        ),
        ("sqlite:////proc/self/state.db", "state store: SQLite file /proc/"),
        ("sqlite:////sys/state.db", "is under /sys"),
        ("'sqlite://'", "state store: an in-memory SQLite database"),
        ("'sqlite:///file::memory:?cache=shared'", "an in-memory SQLite database"),
    ],
)
def test_state_urls_that_are_refused(tmp_path: Path, state: str, expected: str) -> None:
    out = _refused(tmp_path, _edit(MAP, "version: 1\n", f"version: 1\nstate: {state}\n"))
    assert expected in out and "domicile.yaml:2 state" in out


def test_state_urls_that_are_accepted_are_made_absolute(tmp_path: Path) -> None:
    m = _load(tmp_path, _edit(MAP, "version: 1\n", "version: 1\nstate: sqlite+pysqlite:///st.db\n"))
    assert m.state == f"sqlite+pysqlite:///{tmp_path.resolve() / 'st.db'}"
    assert _load(tmp_path, MAP).state == f"sqlite:///{tmp_path.resolve() / '.domicile/state.db'}"


@pytest.mark.parametrize(
    ("exception", "expected"),
    [
        (
            "{dataset: posts, allowed: {}}",
            "domicile.yaml:12 exceptions.[0].allowed: an empty selector {}",
        ),
        (
            "{dataset: posts, allowed: []}",
            "allowed: [] allows no store",
        ),
        (
            "{dataset: posts, allowed: any, jurisdictions: []}",
            "jurisdictions: [] names no jurisdiction",
        ),
        (
            "{dataset: posts, where: {a: {b: c}}, allowed: any}",
            "where: column 'a' must be compared with a value",
        ),
    ],
    ids=["allowed-{}", "allowed-[]", "jurisdictions-[]", "where-dict"],
)
def test_exceptions_that_are_refused(tmp_path: Path, exception: str, expected: str) -> None:
    exception = exception[:-1] + ", reason: r, approved_by: p, expires: 2030-01-01}"
    assert expected in _refused(tmp_path, MAP + f"exceptions:\n  - {exception}\n")


def test_an_object_exception_with_a_row_filter(tmp_path: Path) -> None:
    text = MEDIA + "exceptions:\n  - {dataset: avatars, where: {public: true}, allowed: any,"
    text += " reason: CDN, approved_by: CPO, expires: 2030-01-01}\n"
    assert "cannot filter rows: where: would be ignored" in _refused(tmp_path, text)


# --------------------------------------------------------------------------
# Through the command line: exit 2, a message, never a traceback


def _cli(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "domicile", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_cli_exits_2_without_a_traceback(tmp_path: Path) -> None:
    cases: dict[str, tuple[str | bytes, str]] = {
        "dup": (
            MAP + "  users: {table: people, owner: id}\n",
            "domicile.yaml:11 datasets.users: defined twice (first at line 9)",
        ),
        "bomb": (
            "a: &a [x,x,x,x,x,x,x,x,x,x]\n"
            + "".join(
                f"{c}: &{c} [" + ",".join([f"*{p}"] * 10) + "]\n"
                for p, c in zip("abcdefgh", "bcdefghi", strict=True)
            ),
            "expands to more than",
        ),
        "oracle": (
            _edit(MAP, '"sqlite:///us.db"', '"oracle://db/orcl"'),
            "store us: unsupported URL scheme 'oracle'",
        ),
        "binary": (b"\x89PNG\r\n\x1a\n\x00\x00", "is a binary file"),
        "state": (
            _edit(MAP, "version: 1\n", "version: 1\nstate: 'garbage'\n"),
            "state store: 'garbage' is not a URL",
        ),
        "table": (
            MAP + "  posts2: {table: posts, owner: author_id}\n",
            "declare one dataset per table",
        ),
    }
    for name, (text, expected) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        result = _cli(_write(folder, text))
        assert result.returncode == 2, (name, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, (name, result.stderr)
        assert expected in " ".join(result.stderr.split()), (name, result.stderr)


# --------------------------------------------------------------------------
# 5. Properties: load_map returns a map or raises ConfigError, nothing else

_TOKENS = [
    "version: 1\n",
    "stores:\n",
    "  s:\n",
    "    url: sqlite:///a.db\n",
    "    url: ${DM_URL}\n",
    "    url: ${NOPE}\n",
    "    labels: {country: US}\n",
    "datasets:\n",
    "  d: {table: t, owner: id}\n",
    '  o: {objects: "x/{owner}/*"}\n',
    "subjects: {dataset: d}\n",
    "jurisdictions:\n",
    "  J: {countries: [US], allowed: {country: US}, home: [s]}\n",
    "exceptions:\n",
    "  - {dataset: d, allowed: any, reason: r, approved_by: a, expires: 2030-01-01}\n",
    "state: ",
    "&a ",
    "*a",
    "<<: *a\n",
    "[",
    "]",
    "{",
    "}",
    ",",
    ": ",
    "- ",
    "? ",
    "\n",
    "  ",
    "\t",
    "'",
    '"',
    "!!python/object:os.system ",
    "!!binary ",
    "!!timestamp ",
    "!!set ",
    "!!int ",
    "2024-02-30",
    "0x1F",
    "9" * 40,
    "---\n",
    "...\n",
    "|\n",
    ">-\n",
    "# c\n",
    "%YAML 1.1\n",
    "\ufeff",
    "oracle://x",
    "file://",
    "s3://",
    "~",
    "null",
    "true",
    "NO",
    ".inf",
    "-.nan",
    "\\x00",
    "a -> b.c -> d",
    "{owner}",
    "**",
    "\u00e9",
    "\U0001f600",
]


_LOADED = [0]  # generated maps loaded or refused so far (this process)


@pytest.fixture(autouse=True)
def _tally_inputs(request: pytest.FixtureRequest) -> Iterator[None]:
    before = _LOADED[0]
    yield
    # a generated test counts its examples; any other test is one hostile input
    tally(request, "hostile inputs refused without a traceback", _LOADED[0] - before or 1)


def _must_load_or_refuse(path: Path, text: str) -> None:
    _LOADED[0] += 1
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with contextlib.suppress(ConfigError):  # anything else fails the test
        load_map(path, env={"DM_URL": "sqlite:///b.db"})


_SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# printable text: control characters are refused before YAML starts (tested above)
_bits = st.sampled_from(_TOKENS) | st.text(
    st.characters(blacklist_categories=("Cc", "Cs")) | st.sampled_from("\t\n"), max_size=4
)


@given(st.lists(_bits, max_size=40))
@_SETTINGS
def test_random_yamlish_text(tmp_path: Path, parts: list[str]) -> None:
    _must_load_or_refuse(tmp_path / "domicile.yaml", "".join(parts))


@given(st.lists(st.tuples(st.integers(0, len(MEDIA)), st.integers(0, 12), _bits), max_size=4))
@_SETTINGS
def test_a_valid_map_with_random_edits(tmp_path: Path, edits: list[tuple[int, int, str]]) -> None:
    text = MEDIA + "exceptions:\n  - {dataset: users, allowed: any, reason: r, approved_by: p,"
    text += " expires: 2030-01-01}\n"
    for at, cut, insert in edits:  # replace text[at:at+cut] by a YAML-ish bit
        text = text[:at] + insert + text[at + cut :]
    _must_load_or_refuse(tmp_path / "domicile.yaml", text)


_names = st.sampled_from(["a", "b", "users", "us", "sg", "media", "US", "x"])
_junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6) | st.dates(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def _wired_maps(draw: st.DrawFn) -> dict[str, Any]:
    """Maps of the right shape whose names refer to stores and datasets that may not exist."""
    url = st.sampled_from(
        [
            "sqlite:///a.db",
            "sqlite:///b.db",
            "file://m1",
            "file://m2",
            "s3://bk/p",
            "postgresql://h/d",
            "mysql://h/d",
        ]
    )
    country = st.sampled_from(["US", "SG", "CA", "NO", "Atlantis"])
    label = st.sampled_from(["US", "SG", "CA", "NO", "usa"])
    stores = draw(
        st.dictionaries(
            _names,
            st.fixed_dictionaries(
                {"url": url, "labels": st.fixed_dictionaries({"country": label})}
            ),
            min_size=1,
            max_size=4,
        )
    )
    dataset = st.one_of(
        st.fixed_dictionaries(
            {"table": _names, "owner": st.sampled_from(["id", "a -> b.c -> d", "x ->"])},
            optional={"stores": st.lists(_names, max_size=2), "key": st.lists(_names, max_size=2)},
        ),
        st.fixed_dictionaries(
            {"objects": st.sampled_from(["p/{owner}/*", "p/{owner}/*.jpg", "{owner}/**", "nope"])},
            optional={"stores": st.lists(_names, max_size=2)},
        ),
        st.fixed_dictionaries({"table": _names, "reference": st.just(True)}),
    )
    jurisdiction = st.fixed_dictionaries(
        {
            "countries": st.lists(country, max_size=2),
            "allowed": st.dictionaries(st.just("country"), country, max_size=1)
            | st.lists(st.dictionaries(st.just("country"), country, max_size=1), max_size=2),
            "home": st.lists(_names, max_size=2) | _names,
        }
    )
    exception = st.fixed_dictionaries(
        {
            "dataset": _names,
            "allowed": st.just("any") | st.dictionaries(st.just("country"), country, max_size=1),
            "reason": st.just("r"),
            "approved_by": st.just("p"),
            "expires": st.dates(),
        },
        optional={
            "jurisdictions": st.lists(_names, max_size=2),
            "where": st.dictionaries(_names, _junk, max_size=2),
        },
    )
    return {
        "version": 1,
        "state": draw(st.sampled_from(["sqlite:///s.db", "postgresql://h/s", "sqlite://", "x"])),
        "stores": stores,
        "subjects": {"dataset": draw(_names)},
        "jurisdictions": draw(st.dictionaries(_names, jurisdiction, max_size=2)),
        "datasets": draw(st.dictionaries(_names, dataset, min_size=1, max_size=4)),
        "exceptions": draw(st.lists(exception, max_size=2)),
    }


@given(_wired_maps())
@_SETTINGS
def test_maps_with_wrong_references(tmp_path: Path, data: dict[str, Any]) -> None:
    _must_load_or_refuse(tmp_path / "domicile.yaml", yaml.safe_dump(data, sort_keys=False))


@given(_wired_maps(), st.lists(st.integers(min_value=0), min_size=1, max_size=4), _junk)
@_SETTINGS
def test_maps_with_a_value_replaced_by_junk(
    tmp_path: Path, data: dict[str, Any], route: list[int], junk: Any
) -> None:
    node: Any = data
    for step in route:  # walk down by index, then put junk in the last container reached
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = keys[step % len(keys)]
        if not isinstance(node[key], dict | list) or step == route[-1]:
            node[key] = junk
            break
        node = node[key]
    _must_load_or_refuse(tmp_path / "domicile.yaml", yaml.safe_dump(data, sort_keys=False))
