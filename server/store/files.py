"""Uploaded files (the Files API): metadata in SQLite, contents in `<state-dir>/files/<id>`.

A file is written to a temporary name, fsynced, renamed into place, and only then recorded in
the database: a crash leaves either no file or a complete one (a stray temporary is removed at
start). Deleting removes the row first, then the content. All methods block (SQLite, disk):
callers run them in a worker thread.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS files_seq ON files (seq);
"""
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class StoredFile:
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str


@contextmanager
def transaction(db: sqlite3.Connection, lock: threading.Lock) -> Iterator[sqlite3.Connection]:
    """One write transaction on `db` (autocommit connection), one writer per `lock`."""
    with lock:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def connect(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode (readers never block the writer; commits survive a crash)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    return db


class FileStore:
    def __init__(self, state_dir: Path) -> None:
        self.folder = state_dir / "files"
        self.folder.mkdir(parents=True, exist_ok=True)
        for stray in self.folder.glob("*.part"):  # an upload cut by a crash
            stray.unlink(missing_ok=True)
        self._db = connect(state_dir / "state.sqlite3")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()  # one writer at a time on this connection

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._db, self._lock)

    def add(self, source: BinaryIO, *, filename: str, purpose: str, max_bytes: int) -> StoredFile:
        """Copy `source` in (at most `max_bytes`: ValueError above) and record it."""
        file_id = "file-" + secrets.token_hex(12)
        part = self.folder / f"{file_id}.part"
        size = 0
        try:
            with open(part, "wb") as out:
                while chunk := source.read(_CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise ValueError(f"the file is larger than {max_bytes} bytes")
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(part, self.folder / file_id)
        finally:
            part.unlink(missing_ok=True)
        stored = StoredFile(file_id, size, int(time.time()), filename, purpose)
        with self._tx() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM files").fetchone()[0]
            db.execute(
                "INSERT INTO files (id, bytes, created_at, filename, purpose, seq) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (stored.id, stored.bytes, stored.created_at, filename, purpose, seq),
            )
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, bytes, created_at, filename, purpose FROM files WHERE id = ?",
                (file_id,),
            ).fetchone()
        return StoredFile(*row) if row else None

    def path(self, file_id: str) -> Path:
        return self.folder / file_id

    def list(
        self, *, purpose: str | None, limit: int, after: str | None, newest_first: bool
    ) -> tuple[list[StoredFile], bool]:
        """A page of files in upload order (or newest first) after the file `after`; and
        whether more follow."""
        order = "DESC" if newest_first else "ASC"
        clauses, params = [], []
        if purpose is not None:
            clauses.append("purpose = ?")
            params.append(purpose)
        if after is not None:
            clauses.append(
                f"seq {'<' if newest_first else '>'} (SELECT seq FROM files WHERE id = ?)"
            )
            params.append(after)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, bytes, created_at, filename, purpose FROM files {where} "  # noqa: S608
                f"ORDER BY seq {order} LIMIT ?",
                (*params, limit + 1),
            ).fetchall()
        return [StoredFile(*r) for r in rows[:limit]], len(rows) > limit

    def delete(self, file_id: str) -> bool:
        with self._tx() as db:
            gone = db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount > 0
        if gone:
            self.path(file_id).unlink(missing_ok=True)
        return gone

    def close(self) -> None:
        with self._lock:
            self._db.close()
