"""Read the data map's YAML defensively, keeping the line of every key.

The data map is often written by hand and sometimes handed over by someone
else, so the reader refuses, with a :class:`~domicile.errors.ConfigError`
(exit 2) and never a traceback or a hang:

- a file larger than :data:`MAX_BYTES`, one that is binary or not UTF-8 (the
  byte offset is named), or one holding control characters;
- an empty file, a stream of several documents;
- a key repeated in any mapping: YAML would keep the last definition and
  silently drop the first (a dataset or a store listed twice);
- nesting deeper than :data:`MAX_DEPTH`, more than :data:`MAX_ALIASES` alias
  uses, a document that expands (aliases followed) to more than
  :data:`MAX_NODES` nodes, and an alias that contains itself: each is counted
  while the document is composed, before anything is expanded, so an alias
  bomb ("billion laughs") is refused in milliseconds;
- values that cannot be constructed (``2024-02-30``, an integer of 5,000
  digits), which plain PyYAML lets escape as ``ValueError``.

YAML 1.1's ``yes/no/on/off`` booleans are not recognised: a country ``NO``
(Norway) stays the string "NO".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import (
    AliasEvent,
    MappingEndEvent,
    SequenceEndEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from domicile.errors import ConfigError

try:  # libyaml parses ~8x faster; composing stays in Python so the limits below apply
    from yaml._yaml import CParser as _CParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    _CParser = None  # type: ignore[assignment,misc]

MAX_BYTES = 4 * 1024 * 1024
"""A data map is a few kilobytes; 4 MiB is far beyond any real fleet."""
MAX_DEPTH = 64
"""The deepest real map is about 6 levels (stores.X.options.Y...)."""
MAX_ALIASES = 10_000
"""Alias uses (``*name``) per document."""
MAX_NODES = 200_000
"""Nodes once every alias is followed: what pydantic and the model builder walk.
A map of 20,000 datasets has about 150,000.  Reading costs ~20 µs a node on a
slow machine, so the worst file is refused within a few seconds."""

Path_ = tuple[str | int, ...]

# YAML's printable set (YAML 1.1 §5.1): anything else is a control character.
_UNPRINTABLE = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def dotted(keys: Path_) -> str:
    """``datasets.users.owners.[0]`` for a key path."""
    return ".".join(f"[{k}]" if isinstance(k, int) else str(k) for k in keys)


class Located:
    """Turns a key path into ``file:line key.path`` for messages."""

    def __init__(self, path: Path, lines: Mapping[Path_, int]):
        self.path = path
        self.lines = lines

    def line(self, keys: Path_) -> int | None:
        """The line of the deepest known prefix of *keys*."""
        for n in range(len(keys), -1, -1):
            if keys[:n] in self.lines:
                return self.lines[keys[:n]]
        return None

    def at(self, *keys: str | int) -> str:
        """``file:line dotted.key`` for the given key path."""
        line = self.line(keys)
        name = self.path.name
        place = f"{name}:{line}" if line else name
        return f"{place} {dotted(keys)}" if keys else place


class _Resolver(Resolver):
    """The standard tags without YAML 1.1's yes/no/on/off booleans."""


_Resolver.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in Resolver.yaml_implicit_resolvers.items()
}
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


class _LimitedComposer(Composer):
    """PyYAML's composer, counting as it goes and refusing repeated keys.

    Every node's expanded size and height are computed when it is composed
    (children first), an alias adding the size of the node it names, so the
    cost of a document is known exactly without ever expanding it.
    """

    if TYPE_CHECKING:  # provided by the parser and the resolver this is mixed with

        def get_event(self) -> Any: ...
        def peek_event(self) -> Any: ...
        def check_event(self, *choices: Any) -> bool: ...
        def resolve(self, kind: Any, value: Any, implicit: Any) -> str: ...

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name
        self._path: list[str | int] = []
        self._depth = 0
        self._aliases = 0
        self._nodes = 0  # nodes of the document so far, every alias expanded
        # id(node) -> (expanded nodes, expanded height); a node absent from it
        # while an alias names it is still being composed: the alias is recursive
        self._size: dict[int, tuple[int, int]] = {}
        self._keys = SafeConstructor()  # to compare keys as the dict will (1 == true)

    def _refuse(self, message: str, node_or_mark: Any, hint: str | None = None) -> ConfigError:
        mark = getattr(node_or_mark, "start_mark", node_or_mark)
        where = f"{self._name}:{mark.line + 1}"
        if self._path:  # a path 64 levels deep says nothing more than its first few
            path = tuple(self._path[:8])
            where += " " + dotted(path) + (".…" if len(self._path) > 8 else "")
        return ConfigError(message, where=where, hint=hint)

    def _compose(self, parent: Node | None, index: Any) -> Node:
        node = super().compose_node(parent, index)
        assert node is not None  # PyYAML returns None only past the end of the stream
        return node

    def get_single_node(self) -> Node | None:
        """The one document of the stream (None when it is empty)."""
        self.get_event()  # STREAM-START
        document = None
        if not self.check_event(StreamEndEvent):
            document = self.compose_document()
        if not self.check_event(StreamEndEvent):
            event = self.get_event()
            raise ConfigError(
                "the data map must be a single YAML document, found a second one",
                where=f"{self._name}:{event.start_mark.line + 1}",
                hint="remove the '---' line and what follows, or merge the documents",
            )
        self.get_event()  # STREAM-END
        return document

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        """Compose one node, refusing what would be too deep, too big or recursive."""
        if self.check_event(AliasEvent):
            event = self.peek_event()
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise self._refuse(
                    f"more than {MAX_ALIASES:,} aliases",
                    event,
                    hint="a data map needs few anchors (&name / *name); is this an alias bomb?",
                )
            node = self._compose(parent, index)  # raises on an undefined alias
            size = self._size.get(id(node))
            if size is None:
                raise self._refuse(f"alias *{event.anchor} is used inside the node it names", event)
            self._count(size[0], event)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise self._refuse(f"nested deeper than {MAX_DEPTH} levels", self.peek_event())
        self._count(1, self.peek_event())
        node = self._compose(parent, index)
        self._depth -= 1
        if isinstance(node, ScalarNode):  # most nodes: spare the bookkeeping below
            self._size[id(node)] = (1, 1)
            return node
        children = (
            node.value if isinstance(node, SequenceNode) else [n for p in node.value for n in p]
        )
        sizes = [self._size[id(c)] for c in children]
        height = 1 + max((s[1] for s in sizes), default=0)
        if height > MAX_DEPTH:
            raise self._refuse(f"nested deeper than {MAX_DEPTH} levels (aliases followed)", node)
        self._size[id(node)] = (1 + sum(s[0] for s in sizes), height)
        return node

    def _count(self, nodes: int, at: Any) -> None:
        """Add *nodes* to the running size of the expanded document (exact at the end)."""
        self._nodes += nodes
        if self._nodes > MAX_NODES:
            raise self._refuse(
                f"the document expands to more than {MAX_NODES:,} nodes (aliases followed)",
                at,
                hint="a data map is a few thousand nodes; is this an alias bomb?",
            )

    def compose_sequence_node(self, anchor: Any) -> SequenceNode:
        """As PyYAML's, keeping the index on the key path for messages."""
        start = self.get_event()
        tag = start.tag
        if tag is None or tag == "!":
            tag = self.resolve(SequenceNode, None, start.implicit)
        node = SequenceNode(tag, [], start.start_mark, None, flow_style=start.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
        while not self.check_event(SequenceEndEvent):
            self._path.append(len(node.value))
            node.value.append(self.compose_node(node, len(node.value)))
            self._path.pop()
        node.end_mark = self.get_event().end_mark
        return node

    def compose_mapping_node(self, anchor: Any) -> MappingNode:
        """As PyYAML's, but a key defined twice is an error naming both lines."""
        start = self.get_event()
        tag = start.tag
        if tag is None or tag == "!":
            tag = self.resolve(MappingNode, None, start.implicit)
        node = MappingNode(tag, [], start.start_mark, None, flow_style=start.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
        seen: dict[Any, Node] = {}
        while not self.check_event(MappingEndEvent):
            key = self.compose_node(node, None)
            name: str | int = key.value if isinstance(key, ScalarNode) else "?"
            if isinstance(key, ScalarNode):
                ident = self._key_identity(key)
                first = seen.get(ident)
                if first is not None:
                    self._path.append(name)
                    raise self._refuse(
                        f"defined twice (first at line {first.start_mark.line + 1})",
                        key,
                        hint="remove or rename one: YAML would silently keep only the last",
                    )
                seen[ident] = key
            self._path.append(name)
            value = self.compose_node(node, key)
            self._path.pop()
            node.value.append((key, value))
        node.end_mark = self.get_event().end_mark
        return node

    def _key_identity(self, key: ScalarNode) -> Any:
        """What the key will be in the Python dict (``1``, ``1.0`` and ``true`` collide)."""
        if key.tag == "tag:yaml.org,2002:str":
            return ("str", key.value)
        try:
            value = self._keys.construct_object(key)
            hash(value)
        except Exception:  # unconstructable or unhashable: construction reports it
            return (key.tag, key.value)
        return ("value", value)


class _Constructor(SafeConstructor):
    """SafeConstructor whose value errors carry the line, like its YAML errors."""

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        """Construct *node*; ``ValueError`` and friends become a marked YAML error."""
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # PyYAML's constructors trust their input: !!int '' is an
            # IndexError, 2024-02-30 a ValueError; every one of them is a bad value here
            text = repr(node.value)
            text = text if len(text) <= 60 else text[:57] + "..."
            why = str(exc).split(":")[0][:100]  # Python's own advice (set_int_max_...) is noise
            raise ConstructorError(
                None, None, f"cannot read the value {text}: {why}", node.start_mark
            ) from None


if _CParser is not None:

    class _Loader(_LimitedComposer, _CParser, _Constructor, _Resolver):
        """libyaml's parser, then the limited composer, safe constructor, resolver."""

        def __init__(self, text: str, name: str) -> None:
            _CParser.__init__(self, text)
            _LimitedComposer.__init__(self, name)
            _Constructor.__init__(self)
            _Resolver.__init__(self)

else:  # pragma: no cover - PyYAML built without libyaml

    class _Loader(Reader, Scanner, Parser, _LimitedComposer, _Constructor, _Resolver):  # type: ignore[no-redef]
        """The pure-Python parser, then the limited composer, safe constructor, resolver."""

        def __init__(self, text: str, name: str) -> None:
            Reader.__init__(self, text)
            Scanner.__init__(self)
            Parser.__init__(self)
            _LimitedComposer.__init__(self, name)
            _Constructor.__init__(self)
            _Resolver.__init__(self)


def _lines(root: Node) -> dict[Path_, int]:
    """Key path -> line, walking each node once (an alias points to the anchor's lines)."""
    out: dict[Path_, int] = {}
    seen: set[int] = set()
    stack: list[tuple[Node, Path_]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        out.setdefault(path, node.start_mark.line + 1)
        if id(node) in seen:
            continue
        seen.add(id(node))
        pairs: list[tuple[Any, Node]]
        if isinstance(node, MappingNode):
            # a key listed by a merge (<<) and again explicitly: the explicit one wins
            pairs = [(k.value, v) for k, v in node.value]
            lines = [k.start_mark.line + 1 for k, _ in node.value]
        elif isinstance(node, SequenceNode):
            pairs = list(enumerate(node.value))
            lines = [v.start_mark.line + 1 for v in node.value]
        else:
            continue
        pending: list[tuple[Node, Path_]] = []
        for (key, child), line in zip(pairs, lines, strict=True):
            child_path: Path_ = (*path, key)
            out[child_path] = line
            pending.append((child, child_path))
        stack.extend(reversed(pending))  # popped in document order: anchors before aliases
    return out


def _syntax_error(exc: yaml.YAMLError, name: str) -> ConfigError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{name}:{mark.line + 1}" if mark is not None else name
    problem = getattr(exc, "problem", None) or str(exc)
    if isinstance(exc, ConstructorError):  # the syntax is fine, a value or a tag is not
        return ConfigError(problem, where=where, hint="fix the value, or quote it as a string")
    return ConfigError(
        f"YAML syntax error: {problem}",
        where=where,
        hint="check indentation and quoting near that line",
    )


def parse_yaml(text: str, name: str) -> tuple[Any, dict[Path_, int]]:
    """Parse one YAML document with the limits above: (data, key path -> line).

    *name* is the file name used in messages.  An empty document is refused.
    """
    bad = _UNPRINTABLE.search(text)
    if bad is not None:
        line = text.count("\n", 0, bad.start()) + 1
        raise ConfigError(
            f"control character U+{ord(bad.group()):04X} is not allowed in YAML",
            where=f"{name}:{line}",
            hint="remove it (a text editor can show invisible characters)",
        )
    loader = _Loader(text, name)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(
                "the data map is empty",
                where=name,
                hint="start with 'version: 1' and the sections stores, subjects, datasets",
            )
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, name) from None
    except RecursionError:  # defence in depth: the depth limit should make this unreachable
        raise ConfigError("the document is nested too deeply", where=name) from None
    except ConfigError:
        raise
    except Exception as exc:  # a constructor failing outside construct_object (a generator)
        raise ConfigError(f"cannot read the document: {exc}", where=name) from None
    finally:
        loader.dispose()
    return data, _lines(node)


def read_text(path: Path) -> str:
    """The file's text, refusing what is too big, binary or not UTF-8."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)  # bounded: /dev/zero must not fill the memory
    except FileNotFoundError:
        raise ConfigError(
            f"data map not found: {path}",
            hint="create one (see the README), run `domicile discover`, or pass -c PATH",
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read data map {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(
            f"data map {path} is larger than {MAX_BYTES // (1024 * 1024)} MiB; refusing to read it",
            hint="a data map is a few kilobytes: is -c pointing at the right file?",
        )
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(
            f"data map {path} is not UTF-8 text (a UTF-16 byte order mark at byte offset 0)",
            hint="save it as UTF-8",
        )
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise ConfigError(
            f"data map {path} is a binary file, not UTF-8 text (NUL byte at byte offset {nul})",
            hint="is -c pointing at the right file? save the data map as UTF-8 text",
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"data map {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} "
            f"at byte offset {exc.start})",
            hint="save the data map as UTF-8 (not Latin-1 or Windows-1252)",
        ) from None


def read_yaml(path: Path) -> tuple[Any, Located]:
    """Read and parse the data map at *path*; every failure is a ConfigError."""
    data, lines = parse_yaml(read_text(path), path.name)
    return data, Located(path, lines)
