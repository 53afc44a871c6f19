"""One writer at a time: the lock a saving run holds on a store folder, with its owner's pid and host so
that a second saver can say who holds it; a lock left by a dead process is taken over."""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import sys
import time
from typing import Any

from .format import LOCK_NAME

__all__ = ["StoreLockedError", "WriterLock", "temp_owner_alive", "temp_suffix"]

logger = logging.getLogger(__name__)

try:  # POSIX; elsewhere saving runs unguarded, with a warning
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


class StoreLockedError(RuntimeError):
    """Another process holds a store's writer lock."""


def _owner() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv)[:500],
    }


def _describe(owner: dict[str, Any] | None) -> str:
    if not owner:
        return "another process (its lock file names no owner yet)"
    return f"pid {owner.get('pid')} on host {owner.get('host')!r} (since {owner.get('started')}, `{owner.get('command')}`)"


class WriterLock:
    """An exclusive lock on `store_dir/writer.lock`, held from `acquire()` to `release()`.

    The exclusion is the kernel's (`flock`): it ends with the process that holds it, so a lock
    left by a killed run is free, and its file, still naming the dead owner, is taken over. The file
    says who holds the lock (pid, host, start, command), for the message a second saver gets. A
    second saver waits up to `timeout` seconds (0: fails at once). On release the file is removed;
    an acquirer that locked a file removed meanwhile tries again, so two savers never both hold it.
    """

    def __init__(self, store_dir: str, timeout: float = 0.0, poll: float = 0.2):
        if not timeout >= 0:
            raise ValueError(f"lock timeout={timeout} must be >= 0 seconds")
        self.path = os.path.join(store_dir, LOCK_NAME)
        self.store_dir = store_dir
        self.timeout = float(timeout)
        self.poll = float(poll)
        self._fd: int | None = None

    def read_owner(self) -> dict[str, Any] | None:
        try:
            with open(self.path) as handle:
                owner = json.loads(handle.read() or "null")
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def acquire(self) -> "WriterLock":
        if fcntl is None:  # pragma: no cover
            logger.warning("file locks are unavailable here: nothing stops a second saver on %s", self.store_dir)
            return self
        deadline = time.monotonic() + self.timeout
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    waited = f" after waiting {self.timeout:g} s" if self.timeout else ""
                    raise StoreLockedError(
                        f"store {self.store_dir!r} is being written by {_describe(self.read_owner())}{waited}; one "
                        f"saver at a time: wait for it to finish, or pass a lock timeout (--lock_timeout SECONDS) to "
                        f"wait for it. ({self.path} is released when its owner exits, even when killed.)"
                    ) from None
                time.sleep(self.poll)
                continue
            except OSError as error:  # a filesystem without flock support
                os.close(fd)
                logger.warning("cannot lock %s (%s): nothing stops a second saver on this store", self.path, error)
                return self
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # its holder removed the file between our open and our lock: lock the new one
                os.close(fd)
                continue
            previous = self.read_owner()
            if previous:
                logger.warning("taking over the writer lock of %s, which no longer runs", _describe(previous))
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(_owner()).encode())
            os.fsync(fd)
            self._fd = fd
            return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.remove(self.path)  # while still locked, so nobody locks the file we remove
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def temp_suffix() -> str:
    """The suffix of this process's temporary files: `.tmp-<pid>-<host>`, so cleanup can tell whose they are."""
    return f".tmp-{os.getpid()}-{socket.gethostname()}"


def temp_owner_alive(name: str) -> bool:
    """Whether the temporary file `name` belongs to another process still running on this host.

    Temporary names end in `.tmp-<pid>-<host>` (`.tmp-<pid>` before format 2). A file of this
    process, of a dead process, or of another host (whose runs the writer lock excludes) is not.
    """
    tail = name.rsplit(".tmp-", 1)[-1]
    pid_text, _, host = tail.partition("-")
    if not pid_text.isdigit() or (host and host != socket.gethostname()):
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
