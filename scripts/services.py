"""The servers a fleet of replicas shares, for the tests and for trying a fleet out by hand:
Debian's PostgreSQL in a temporary folder on a loopback port (its own cluster, nothing of the
system's touched), and Debian's HAProxy in front of the replicas (round-robin, no stickiness,
WebSockets passed through, each replica's /healthz checked), started and stopped by this script.

    python scripts/services.py postgres DIR                      # prints the admin URL; Ctrl-C stops it
    python scripts/services.py haproxy PORT 127.0.0.1:8081 ...   # the balancer on PORT; Ctrl-C stops it
    python scripts/services.py redis PORT                        # Redis on PORT, nothing saved; Ctrl-C stops it

Run as root (as the tests are in CI), the cluster belongs to the `postgres` user, as PostgreSQL
requires; otherwise to whoever runs it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ADMIN = "tandem_admin"  # the cluster's superuser; the applications' roles are made by the tests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postgres_bin() -> Path:
    """Debian's server binaries (not on PATH: they live under /usr/lib/postgresql/VERSION/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    raise FileNotFoundError("PostgreSQL is not installed: `make test` installs Debian's postgresql")


class Postgres:
    """One throwaway cluster: `start()`, `create_database(name)` → its URL, `stop()`."""

    def __init__(self, root: Path | None = None) -> None:
        # (not under pytest's folder, which is private to the user running the tests)
        self.root = Path(tempfile.mkdtemp(prefix="tandem-pg-", dir=root))
        self.data = self.root / "data"
        self.port = free_port()
        self.bin = postgres_bin()
        self.as_postgres = os.geteuid() == 0

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [*(["runuser", "-u", "postgres", "--"] if self.as_postgres else []), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stderr[-2000:] or done.stdout[-2000:]}")
        return done

    def start(self) -> Postgres:
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", ADMIN, "-A", "trust", "--no-sync", "--locale=C", "-E", "UTF8")
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off -c synchronous_commit=off"
            " -c full_page_writes=off -c max_connections=300"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w", "-t", "60", "start"
        )
        return self

    def url(self, database: str = "postgres", user: str = ADMIN, password: str | None = None, driver: str = "asyncpg") -> str:
        auth = user if password is None else f"{user}:{password}"
        return f"postgresql+{driver}://{auth}@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        """One statement through psql as the superuser; its output, unaligned."""
        psql = str(self.bin / "psql")
        done = self._run(
            psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", ADMIN, "-d", database, "-v", "ON_ERROR_STOP=1", "-Atc", statement
        )
        return done.stdout

    def create_database(self, name: str, owner: str | None = None) -> str:
        """A fresh database (owned by the role `owner`, made if missing); its URL, as that role."""
        if owner is not None and not self.sql(f"SELECT 1 FROM pg_roles WHERE rolname = '{owner}'"):
            self.sql(f'CREATE ROLE "{owner}" LOGIN')
        self.sql(f'CREATE DATABASE "{name}"' + (f' OWNER "{owner}"' if owner else ""))
        return self.url(name, user=owner or ADMIN)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# The example deployment's balancer (README: "Several replicas"): round-robin with no stickiness (a
# visitor's socket may land on any replica), WebSockets passed through (HAProxy upgrades them in
# HTTP mode; `timeout tunnel` keeps an idle chat open), and each replica's /healthz checked twice a
# second: a replica that says `draining` (503) gets no new visitors.
HAPROXY_CONFIG = """\
global
    maxconn 4096
    stats socket {stats} mode 600 level user

defaults
    mode http
    option redispatch
    retries 3
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h

frontend tandem
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option forwardfor
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter 500ms fall 1 rise 2
{servers}
"""


def _wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, seconds: float = 30) -> None:
    """Until `ready()` (a refused connection counts as not yet); a process that exits fails with its log's tail."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"{log.stem} did not start: {log.read_text()[-2000:]}")


class Haproxy:
    """Debian's HAProxy on `port` in front of `replicas` ("127.0.0.1:PORT" each), in the foreground."""

    def __init__(self, port: int, replicas: list[str], root: Path | None = None) -> None:
        self.port, self.replicas = port, replicas
        self.root = Path(tempfile.mkdtemp(prefix="tandem-haproxy-", dir=root))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Haproxy:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(binary).exists():
            raise FileNotFoundError("HAProxy is not installed: `make test` installs Debian's haproxy")
        servers = "\n".join(f"    server r{i} {address} check" for i, address in enumerate(self.replicas))
        config = self.root / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.format(port=self.port, servers=servers, stats=self.root / "stats.sock"))
        subprocess.run([binary, "-c", "-q", "-f", str(config)], check=True, timeout=30)
        with open(self.root / "haproxy.log", "wb") as log:  # (the child keeps its own copy of the descriptor)
            self.proc = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)

        def listening() -> bool:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True

        _wait_until(listening, self.proc, self.root / "haproxy.log")
        return self

    def up(self) -> int:
        """How many replicas its health checks pass now (from its stats socket)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.root / "stats.sock"))
            s.sendall(b"show stat\n")
            stat = b"".join(iter(lambda: s.recv(65536), b"")).decode()
        rows = [line.split(",") for line in stat.splitlines() if line.startswith("replicas,") and not line.startswith("replicas,BACKEND")]
        return sum(1 for row in rows if row[17] == "UP")  # (the 18th column of `show stat` is the status)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Haproxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Redis:
    """Debian's redis-server on a loopback port, keeping nothing on disk; `stop()` and `start()`
    again on the same port (a Redis that goes away and comes back)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="tandem-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            raise FileNotFoundError("Redis is not installed: `make test` installs Debian's redis-server")
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.root)]
        with open(self.root / "redis.log", "ab") as log:
            self.proc = subprocess.Popen([binary, *args], stdout=log, stderr=subprocess.STDOUT)

        def answering() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        _wait_until(answering, self.proc, self.root / "redis.log")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # (gone at once, as a crashed Redis is)
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> Redis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _wait_for_ctrl_c() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "postgres":
        with Postgres(Path(sys.argv[2])) as pg:
            print(pg.url(), flush=True)
            _wait_for_ctrl_c()
    elif len(sys.argv) >= 4 and sys.argv[1] == "haproxy":
        with Haproxy(int(sys.argv[2]), sys.argv[3:]) as lb:
            print(lb.url, flush=True)
            _wait_for_ctrl_c()
    elif len(sys.argv) == 3 and sys.argv[1] == "redis":
        with Redis(int(sys.argv[2])) as r:
            print(r.url, flush=True)
            _wait_for_ctrl_c()
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
