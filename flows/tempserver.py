"""The Prefect server a command talks to when none is configured, started once and watched.

Without ``PREFECT_API_URL`` Prefect starts a temporary server (a uvicorn subprocess) the
first time anything needs its API. Two things go wrong with that on a busy machine:

- it waits 20 s for the server by default, and a fresh ``PREFECT_HOME`` first creates and
  migrates its database: under load that takes longer, and the run dies with a traceback;
- the server outlives a command killed with SIGKILL (it keeps listening, about 200 MB).

`ensure_temporary_server` starts Prefect's own temporary server (the one instance every
Prefect client of this process then uses) before a flow run, waits up to
`SERVER_START_SECONDS` (or Prefect's setting when larger) and raises `PrefectServerError`
when it still does not answer. It first checks that the server can keep its database (the
Prefect home must be a folder this user can write), and gives up when the server keeps exiting
at startup, rather than wait out the timeout. The server subprocess (like the one `flows.serve` starts)
runs under a small wrapper that stops it as soon as its parent process is gone.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from anomaly_ae.errors import AnomalyAEError

SERVER_START_SECONDS = 180
STARTUP_SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"

# Runs `python -m MODULE ARGS...` in a process that watches its parent: when the parent is
# gone (killed with SIGKILL, say), it stops itself (SIGTERM: a clean shutdown; exit after 10 s).
# A poll of the parent's id, as the decode workers do, works for any thread that started it.
_WATCHED = """\
import os, runpy, signal, sys, threading, time
parent = int(sys.argv[1])
def watch():
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)
    os._exit(1)
threading.Thread(target=watch, name="parent-watch", daemon=True).start()
module = sys.argv[2]
sys.argv = [sys.argv[0], *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


class PrefectServerError(AnomalyAEError):
    """The temporary Prefect server did not start."""


def watched_command(args: list[str]) -> list[str]:
    """``[python, -m, module, ...]`` rewritten to run the module under the parent watch."""
    args = [str(a) for a in args]
    if len(args) >= 3 and args[1] == "-m":
        return [args[0], "-c", _WATCHED, str(os.getpid()), args[2], *args[3:]]
    return args


# Prefect starts the server again (on another port) each time it exits with code 3 at startup,
# taking it for a port taken meanwhile; a server that fails to start for any other reason (a
# database it cannot open, say) would be started again until the timeout. After this many
# starts the command gives up at once.
MAX_STARTS = 4


class _WatchedSubprocess:
    """The `subprocess` module as Prefect's server module sees it while it starts a server:
    the same, except that ``python -m ...`` children run under the parent watch, in a session of
    their own: Ctrl-C in a terminal signals the whole foreground group, and a server that died with
    the command could not record the interrupted run (Prefect then prints its failed connections
    and the command ends with 1, not 130). The server still stops with the command: Prefect stops
    it at exit, and the watch when the command is killed."""

    def __init__(self, real):
        self._real = real
        self.starts = 0

    def Popen(self, args, *rest, **kwargs):  # noqa: N802 (the name Prefect calls)
        if self.starts >= MAX_STARTS:
            raise PrefectServerError(
                f"The temporary Prefect server exited at startup {self.starts} times (its log above says why, e.g. "
                "a database it cannot open). Fix what it reports, or start a server with `prefect server start` "
                "and set PREFECT_API_URL.")
        self.starts += 1
        kwargs.setdefault("start_new_session", True)
        return self._real.Popen(watched_command(args), *rest, **kwargs)

    def __getattr__(self, name):
        return getattr(self._real, name)


_lock = threading.Lock()


def startup_seconds() -> int:
    """How long to wait for the temporary server: Prefect's setting, at least SERVER_START_SECONDS."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    return max(int(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()), SERVER_START_SECONDS)


def ensure_temporary_server() -> str | None:
    """Start Prefect's temporary server now, unless a server is configured or it already runs.

    Returns:
        The temporary server's API URL, or None when PREFECT_API_URL is set.

    Raises:
        PrefectServerError: the server did not answer within `startup_seconds()`.
    """
    from prefect.server.api import server as server_module
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return None
    with _lock:
        server = server_module.SubprocessASGIServer()  # the instance Prefect's own clients use
        if server.running:
            return server.api_url
        check_database_folder()
        timeout = startup_seconds()
        real = server_module.subprocess
        server_module.subprocess = _WatchedSubprocess(real)
        try:
            server.start(timeout=timeout)
        except PrefectServerError:
            server.stop()
            raise
        except RuntimeError as exc:
            server.stop()
            raise PrefectServerError(
                f"The temporary Prefect server did not answer within {timeout} s (a busy machine, or a "
                f"first start that creates its database): {_first_line(exc)} Set {STARTUP_SETTING} higher, "
                "or start a server with `prefect server start` and set PREFECT_API_URL.") from None
        finally:
            server_module.subprocess = real
        return server.api_url


def check_database_folder() -> None:
    """Raise PrefectServerError when the temporary server could not keep its SQLite database: its
    folder (the Prefect home, unless the database is configured elsewhere) cannot be created or
    written. Such a server exits at startup, which Prefect takes for a slow start: it would wait
    for the whole timeout, then blame the machine."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    home = Path(settings.home).expanduser()
    url = settings.server.database.connection_url
    url = url.get_secret_value() if url is not None else ""
    database = _sqlite_file(url) if url else home / "prefect.db"
    if database is None:  # another database server, or SQLite in memory: nothing on this disk
        return
    problem = _unwritable(database, home)
    if problem is None:
        return
    if database.parent == home:
        raise PrefectServerError(
            f"The Prefect home {home} {problem}; the temporary Prefect server keeps its database there. Set "
            "PREFECT_HOME to a folder this user can write (it defaults to ~/.prefect), or start a server with "
            "`prefect server start` and set PREFECT_API_URL.")
    raise PrefectServerError(
        f"The Prefect database folder {database.parent} {problem}; the temporary Prefect server keeps its "
        f"database {database.name} there. Fix the "
        "folder, or point PREFECT_SERVER_DATABASE_CONNECTION_URL somewhere this user can write.")


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite database URL (``sqlite+aiosqlite:////home/u/.prefect/prefect.db``), or None."""
    scheme, _, rest = url.partition("://")
    if not scheme.startswith("sqlite"):
        return None
    name = rest.removeprefix("/").split("?", 1)[0]
    if not name or name == ":memory:" or "mode=memory" in url:
        return None
    return Path(name).expanduser().absolute()


def _unwritable(database: Path, home: Path) -> str | None:
    """Why `database` (a SQLite file) cannot be created or written; None when it can. Its folder
    must exist, except the Prefect home, which is made (as Prefect makes it: in an existing folder)."""
    folder = database.parent
    if folder == home and not folder.exists():
        try:
            folder.mkdir(mode=0o700)
        except FileNotFoundError:
            return f"cannot be created (its folder {folder.parent} does not exist)"
        except OSError as exc:
            return f"cannot be created ({exc.strerror or exc})"
    if not folder.is_dir():
        return "does not exist or is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return "is not writable by this user"
    if database.exists() and not os.access(database, os.R_OK | os.W_OK):
        return f"holds a database {database.name} that this user cannot write"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def python_module_command(module: str, *args: str) -> list[str]:
    """``python -m module args`` under the parent watch (for servers this process starts itself)."""
    return watched_command([sys.executable, "-m", module, *args])
