"""A TCP proxy for the test harness that breaks connections on command.

Put between domicile and a server (PostgreSQL, MariaDB, the S3 endpoint), it
forwards bytes both ways until the test says otherwise:

- :meth:`FaultProxy.drop` closes every open connection (FIN, pending bytes lost);
- :meth:`FaultProxy.reset` resets them (``SO_LINGER`` 0, then close: an RST);
- :meth:`FaultProxy.stall` stops forwarding for a while, sockets kept open (the
  bytes that arrive meanwhile are held and delivered when the stall ends, a
  close seen meanwhile too);
- :meth:`FaultProxy.refuse` answers new connections with an RST;
- :meth:`FaultProxy.fault_after` and :meth:`FaultProxy.fault_on_connection`
  arm one fault that fires by itself after so many more bytes, or on the n-th
  new connection, so that it lands inside a statement or a transaction.

It runs an asyncio loop on a daemon thread and listens on 127.0.0.1 with an
ephemeral port; every command may be called from any thread at any moment
(from a protocol hook of the run, say) and returns once it has taken effect.
:attr:`FaultProxy.faults` counts the faults injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import sqlalchemy as sa

T = TypeVar("T")
KINDS = ("drop", "reset", "stall")
_CHUNK = 65536
_EOF = b""


@dataclass
class _Trigger:
    """One armed fault: *kind* fires after *after_bytes* more bytes (on *connection*)."""

    kind: str
    after_bytes: int
    seconds: float
    connection: int | None = None  # the n-th connection accepted after arming; None: any
    direction: str | None = None  # "up" (to the server), "down" (to the client) or both
    pattern: bytes | None = None  # fire at the n-th request holding this (or at its reply)
    reply: bool = False
    nth: int = 1
    counted: int = 0


@dataclass
class _Pair:
    """One client connection and the upstream connection made for it."""

    id: int
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    trigger: _Trigger | None = None  # a fault aimed at this connection only
    closed: bool = False


class FaultProxy:
    """Forwards 127.0.0.1:<port> to *upstream* and injects network faults on command."""

    def __init__(self, upstream_host: str, upstream_port: int, name: str = "proxy"):
        self.upstream = (upstream_host, upstream_port)
        self.name = name
        self.port = 0
        self.faults: dict[str, int] = {"drop": 0, "reset": 0, "stall": 0, "refused": 0}
        self.accepted = 0
        self.bytes = 0
        self.closed_while_stalled = 0  # a peer that gave up on a stalled connection
        self.fired = threading.Event()  # set when an armed fault fires
        self.trace: list[tuple[int, str, int]] | None = None  # a list: every chunk logged
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._server: asyncio.Server | None = None
        self._pairs: dict[int, _Pair] = {}
        self._ids = itertools.count(1)
        self._refusing = False
        self._flowing: asyncio.Event | None = None
        self._stall_end: asyncio.TimerHandle | None = None
        self._trigger: _Trigger | None = None
        self._aimed: _Trigger | None = None  # waits for the n-th new connection
        self._new_since_armed = 0

    @classmethod
    def for_url(cls, url: str, name: str = "proxy") -> FaultProxy:
        """A started proxy in front of the server of SQLAlchemy (or http) URL *url*."""
        if url.startswith(("http://", "https://")):
            host, _, port = url.split("//", 1)[1].rstrip("/").partition(":")
            return cls(host, int(port or 80), name).start()
        parsed = sa.make_url(url)
        assert parsed.host and parsed.port, f"{url} names no host and port"
        return cls(parsed.host, parsed.port, name).start()

    # -- life ------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Start the loop thread and listen; returns self."""
        self._thread.start()
        self._call(self._listen())
        return self

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        """Close every connection and the listener; stop the loop thread."""
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        self._close_pairs(list(self._pairs.values()), "drop")
        await asyncio.sleep(0)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- addresses -------------------------------------------------------------------------

    def url(self, url: str) -> str:
        """*url* (a SQLAlchemy URL) with its host and port replaced by the proxy's."""
        proxied = sa.make_url(url).set(host="127.0.0.1", port=self.port)
        return proxied.render_as_string(hide_password=False)

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>``: an S3 endpoint through the proxy."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        """Connections open through the proxy now."""
        return len(self._pairs)

    @property
    def injected(self) -> int:
        """Faults injected so far, of every kind (refused connections included)."""
        return sum(self.faults.values())

    # -- commands (any thread) -------------------------------------------------------------

    def drop(self) -> int:
        """Close every open connection (both sides); returns how many."""
        return self._call_sync(lambda: self._fault("drop"))

    def reset(self) -> int:
        """Reset every open connection (RST to both sides); returns how many."""
        return self._call_sync(lambda: self._fault("reset"))

    def stall(self, seconds: float) -> None:
        """Forward nothing for *seconds* from now; connections stay open, new ones too."""
        self._call_sync(lambda: self._stall(seconds))

    def refuse(self, on: bool = True) -> None:
        """Answer new connections with an RST (*on*) or serve them again."""

        def set_refusing() -> None:
            self._refusing = on

        self._call_sync(set_refusing)

    def fault_after(
        self,
        nbytes: int,
        kind: str = "reset",
        *,
        seconds: float = 1.0,
        direction: str | None = None,
    ) -> None:
        """Arm one *kind* fault on every connection once *nbytes* more bytes went through
        (counted in *direction* only, if given: ``up`` to the server, ``down`` back).

        The chunk that crosses the count is not forwarded: the fault lands
        before it (inside the statement or response it belongs to).
        """
        trigger = _Trigger(self._kind(kind), nbytes, seconds, direction=direction)

        def arm() -> None:
            self.fired.clear()
            self._trigger = trigger

        self._call_sync(arm)

    def fault_on_connection(
        self, nth: int = 1, kind: str = "reset", *, after_bytes: int = 0, seconds: float = 1.0
    ) -> None:
        """Arm one *kind* fault on the *nth* connection accepted from now on, once it
        carried *after_bytes* bytes (0: as soon as it is accepted)."""
        trigger = _Trigger(self._kind(kind), after_bytes, seconds, connection=nth)

        def arm() -> None:
            self.fired.clear()
            self._aimed, self._new_since_armed = trigger, 0

        self._call_sync(arm)

    def fault_at_request(
        self,
        pattern: bytes,
        kind: str = "reset",
        *,
        nth: int = 1,
        reply: bool = False,
        seconds: float = 1.0,
    ) -> None:
        """Arm one *kind* fault on the connection whose *nth* request from now on holds
        *pattern* (``b"DELETE"``, ``b"COMMIT"``): the request is not forwarded, or, with
        *reply*, it reaches the server and its reply is what is lost (or held)."""
        trigger = _Trigger(self._kind(kind), 0, seconds, pattern=pattern, nth=nth, reply=reply)

        def arm() -> None:
            self.fired.clear()
            self._trigger = trigger

        self._call_sync(arm)

    def lose_reply_to(
        self, pattern: bytes, kind: str = "reset", *, nth: int = 1, seconds: float = 1.0
    ) -> None:
        """:meth:`fault_at_request` on the reply: ``lose_reply_to(b"COMMIT")`` makes a
        commit the client cannot know the outcome of (the server committed, the
        client sees the connection fail)."""
        self.fault_at_request(pattern, kind, nth=nth, reply=True, seconds=seconds)

    def heal(self) -> None:
        """Serve normally again: no stall, no refusal, nothing armed."""

        def heal() -> None:
            self._refusing = False
            self._trigger = self._aimed = None
            for pair in self._pairs.values():
                pair.trigger = None
            self._end_stall()

        self._call_sync(heal)

    # -- the loop's side -------------------------------------------------------------------

    @staticmethod
    def _kind(kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"fault kind {kind!r}: one of {', '.join(KINDS)}")
        return kind

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def _call_sync(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()

        return self._call(run())

    def _fault(self, kind: str, pairs: list[_Pair] | None = None, seconds: float = 1.0) -> int:
        if kind == "stall":
            self._stall(seconds)
            return len(self._pairs)
        chosen = list(self._pairs.values()) if pairs is None else pairs
        self.faults[kind] += 1
        self._close_pairs(chosen, kind)
        return len(chosen)

    def _stall(self, seconds: float) -> None:
        assert self._flowing is not None
        self.faults["stall"] += 1
        self._flowing.clear()
        if self._stall_end is not None:
            self._stall_end.cancel()
        self._stall_end = self._loop.call_later(seconds, self._end_stall)

    def _end_stall(self) -> None:
        assert self._flowing is not None
        if self._stall_end is not None:
            self._stall_end.cancel()
            self._stall_end = None
        self._flowing.set()

    def _close_pairs(self, pairs: list[_Pair], how: str) -> None:
        """Close *pairs*: ``reset`` (RST), ``drop`` (FIN, bytes not yet sent lost) or
        ``eof`` (FIN after the bytes already forwarded)."""
        for pair in pairs:
            if pair.closed:
                continue
            pair.closed = True
            self._pairs.pop(pair.id, None)
            for task in pair.tasks:
                if task is not asyncio.current_task():
                    task.cancel()
            for writer in (pair.client, pair.upstream):
                _close_writer(writer, how)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            self.faults["refused"] += 1
            _close_writer(writer, "reset")
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _close_writer(writer, "reset")
            return
        self.accepted += 1
        pair = _Pair(next(self._ids), writer, up_writer)
        self._pairs[pair.id] = pair
        if self._aimed is not None:
            self._new_since_armed += 1
            if self._new_since_armed == self._aimed.connection:
                pair.trigger, self._aimed = self._aimed, None
                if pair.trigger.after_bytes <= 0:
                    self._fire(pair, pair.trigger)
                    return
        for src, dst, direction in ((reader, up_writer, "up"), (up_reader, writer, "down")):
            queue: asyncio.Queue[bytes] = asyncio.Queue()
            pair.tasks.append(asyncio.create_task(self._read(pair, src, queue, direction)))
            pair.tasks.append(asyncio.create_task(self._write(pair, queue, dst)))

    def _fire(self, pair: _Pair, trigger: _Trigger) -> None:
        if trigger is pair.trigger:
            pair.trigger = None
            self._fault(trigger.kind, [pair], trigger.seconds)
        else:
            self._trigger = None
            self._fault(trigger.kind, None, trigger.seconds)
        self.fired.set()

    def _account(self, pair: _Pair, data: bytes, direction: str) -> bool:
        """Count *data* read on *pair*; True when an armed fault fired on it."""
        n = len(data)
        self.bytes += n
        if self.trace is not None:
            self.trace.append((pair.id, direction, n))
        armed = self._trigger
        if armed is not None and armed.pattern is not None:
            if direction == "up" and armed.pattern in data:
                armed.counted += 1
                if armed.counted == armed.nth:  # aimed at this connection from now on
                    self._trigger, pair.trigger = None, armed
                    if not armed.reply:
                        self._fire(pair, armed)
                        return True
                    armed.after_bytes, armed.direction, armed.counted = 1, "down", 0
            armed = None
        for trigger in (pair.trigger, armed):
            if trigger is None or trigger.direction not in (None, direction):
                continue
            trigger.counted += n
            if trigger.counted >= trigger.after_bytes:
                self._fire(pair, trigger)
                return True
        return False

    async def _read(
        self,
        pair: _Pair,
        reader: asyncio.StreamReader,
        queue: asyncio.Queue[bytes],
        direction: str,
    ) -> None:
        """Read one direction into *queue* (kept reading during a stall)."""
        assert self._flowing is not None
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                if self._account(pair, data, direction) and pair.closed:
                    return  # dropped or reset before these bytes went on
                queue.put_nowait(data)  # during a stall: held until it ends
        except (OSError, asyncio.IncompleteReadError):
            pass
        if not self._flowing.is_set():
            self.closed_while_stalled += 1
        queue.put_nowait(_EOF)

    async def _write(
        self, pair: _Pair, queue: asyncio.Queue[bytes], writer: asyncio.StreamWriter
    ) -> None:
        """Forward *queue* to *writer*, waiting out stalls; at EOF close the pair."""
        assert self._flowing is not None
        try:
            while True:
                data = await queue.get()
                await self._flowing.wait()
                if pair.closed:
                    return
                if data is _EOF or not data:
                    break
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        # neither protocol half-closes: one side gone, the connection is over
        self._close_pairs([pair], "eof")


def _close_writer(writer: asyncio.StreamWriter, how: str) -> None:
    """Close the socket under *writer*: ``reset`` (RST), ``drop`` (FIN now) or ``eof``."""
    if how == "eof":
        writer.close()  # after the bytes it still buffers
        return
    if how == "reset":
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
