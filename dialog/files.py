"""The chat's files are private to the user who runs the server: the dialog folder is created 0700,
and the chat store (with SQLite's -wal and -shm files) and the key are 0600."""

from __future__ import annotations

import os
from pathlib import Path

SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_dir(path: Path) -> None:
    """Make `path` (and missing parents) if needed; a folder this call creates is 0700, whatever the
    umask. A folder that already exists is left as it is (it may be one the operator chose and shares)."""
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        return
    os.chmod(path, 0o700)


def private_sqlite(path: Path) -> None:
    """Before SQLite opens `path`: the database file exists and is 0600, and so are side files left
    by an earlier run. SQLite gives the -wal and -shm files it creates the database file's mode."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # an empty file is an empty database
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in SQLITE_SIDE_FILES:
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.chmod(side, 0o600)
