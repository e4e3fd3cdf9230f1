"""Batch jobs (the Batches API): the job rows and one result row per finished request, in the
same SQLite database as the files (WAL: every result is committed as it arrives, so a restart
resumes a batch where it stopped and no `custom_id` is run twice). Methods block: callers run
them in a worker thread.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.store.files import connect, transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    metadata TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    in_progress_at INTEGER,
    finalizing_at INTEGER,
    completed_at INTEGER,
    failed_at INTEGER,
    expired_at INTEGER,
    cancelling_at INTEGER,
    cancelled_at INTEGER,
    output_file_id TEXT,
    error_file_id TEXT,
    total INTEGER NOT NULL DEFAULT 0,
    errors TEXT
);
CREATE TABLE IF NOT EXISTS batch_results (
    batch_id TEXT NOT NULL,
    custom_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    result TEXT NOT NULL,
    PRIMARY KEY (batch_id, custom_id)
);
"""
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
_TIMES = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)
_COLUMNS = (
    "id, status, endpoint, input_file_id, completion_window, metadata, created_at, expires_at, "
    + ", ".join(_TIMES)
    + ", output_file_id, error_file_id, total, errors"
)


@dataclass
class StoredBatch:
    id: str
    status: str
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: int
    expires_at: int
    times: dict[str, int | None]
    output_file_id: str | None
    error_file_id: str | None
    total: int
    errors: list[dict[str, Any]] | None
    completed: int = 0
    failed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class BatchStore:
    def __init__(self, state_dir: Path) -> None:
        self._db = connect(state_dir / "state.sqlite3")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._db, self._lock)

    def create(
        self,
        *,
        endpoint: str,
        input_file_id: str,
        completion_window: str,
        window_s: int,
        metadata: dict[str, str] | None,
    ) -> StoredBatch:
        batch_id = "batch_" + secrets.token_hex(12)
        now = int(time.time())
        with self._tx() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM batches").fetchone()[0]
            db.execute(
                "INSERT INTO batches (id, seq, status, endpoint, input_file_id, "
                "completion_window, metadata, created_at, expires_at) "
                "VALUES (?, ?, 'validating', ?, ?, ?, ?, ?, ?)",
                (
                    batch_id,
                    seq,
                    endpoint,
                    input_file_id,
                    completion_window,
                    json.dumps(metadata) if metadata is not None else None,
                    now,
                    now + window_s,
                ),
            )
        got = self.get(batch_id)
        assert got is not None
        return got

    def get(self, batch_id: str) -> StoredBatch | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM batches WHERE id = ?",  # noqa: S608
                (batch_id,),
            ).fetchone()
            if row is None:
                return None
            counts = self._db.execute(
                "SELECT COALESCE(SUM(ok), 0), COALESCE(SUM(1 - ok), 0) FROM batch_results "
                "WHERE batch_id = ?",
                (batch_id,),
            ).fetchone()
        return _batch(row, counts)

    def page(self, *, limit: int, after: str | None) -> tuple[list[StoredBatch], bool]:
        """Newest first, after the batch `after`; and whether more follow."""
        where, params = "", []
        if after is not None:
            where = "WHERE seq < (SELECT seq FROM batches WHERE id = ?)"
            params.append(after)
        with self._lock:
            ids = [
                r[0]
                for r in self._db.execute(
                    f"SELECT id FROM batches {where} ORDER BY seq DESC LIMIT ?",  # noqa: S608
                    (*params, limit + 1),
                ).fetchall()
            ]
        batches = [b for b in (self.get(i) for i in ids[:limit]) if b is not None]
        return batches, len(ids) > limit

    def active(self) -> list[str]:
        """Batches not finished yet, oldest first (the runner's queue)."""
        marks = ", ".join("?" * len(ACTIVE))
        with self._lock:
            rows = self._db.execute(
                f"SELECT id FROM batches WHERE status IN ({marks}) ORDER BY seq",  # noqa: S608
                ACTIVE,
            ).fetchall()
        return [r[0] for r in rows]

    def set_status(self, batch_id: str, status: str, *, only_from: tuple[str, ...] = ()) -> bool:
        """Move to `status` (stamping its `<status>_at` time); with `only_from`, only from
        one of those statuses. Returns whether it moved."""
        stamp = f"{status}_at"
        sets = "status = ?" + (f", {stamp} = ?" if stamp in _TIMES else "")
        params: list[Any] = [status] + ([int(time.time())] if stamp in _TIMES else [])
        where = "id = ?"
        params.append(batch_id)
        if only_from:
            where += f" AND status IN ({', '.join('?' * len(only_from))})"
            params.extend(only_from)
        with self._tx() as db:
            return bool(db.execute(f"UPDATE batches SET {sets} WHERE {where}", params).rowcount)  # noqa: S608

    def set_total(self, batch_id: str, total: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE batches SET total = ? WHERE id = ?", (total, batch_id))

    def fail(self, batch_id: str, errors: list[dict[str, Any]]) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE batches SET status = 'failed', failed_at = ?, errors = ? WHERE id = ?",
                (int(time.time()), json.dumps(errors), batch_id),
            )

    def done_ids(self, batch_id: str) -> set[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT custom_id FROM batch_results WHERE batch_id = ?", (batch_id,)
            ).fetchall()
        return {r[0] for r in rows}

    def add_result(
        self, batch_id: str, custom_id: str, line: int, ok: bool, result: dict[str, Any]
    ) -> None:
        """Record one finished request (a second record of the same custom_id is ignored)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO batch_results (batch_id, custom_id, line, ok, result) "
                "VALUES (?, ?, ?, ?, ?)",
                (batch_id, custom_id, line, int(ok), json.dumps(result)),
            )

    def results(self, batch_id: str, ok: bool) -> list[str]:
        """The recorded result lines (JSON text) of one kind, in input order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT result FROM batch_results WHERE batch_id = ? AND ok = ? ORDER BY line",
                (batch_id, int(ok)),
            ).fetchall()
        return [r[0] for r in rows]

    def finish(
        self, batch_id: str, status: str, output_file_id: str | None, error_file_id: str | None
    ) -> None:
        with self._tx() as db:
            db.execute(
                f"UPDATE batches SET status = ?, {status}_at = ?, output_file_id = ?, "  # noqa: S608
                "error_file_id = ? WHERE id = ?",
                (status, int(time.time()), output_file_id, error_file_id, batch_id),
            )


def _batch(row: tuple[Any, ...], counts: tuple[int, int]) -> StoredBatch:
    (bid, status, endpoint, input_file, window, metadata, created, expires, *rest) = row
    times = dict(zip(_TIMES, rest[: len(_TIMES)], strict=True))
    output, error, total, errors = rest[len(_TIMES) :]
    return StoredBatch(
        id=bid,
        status=status,
        endpoint=endpoint,
        input_file_id=input_file,
        completion_window=window,
        metadata=json.loads(metadata) if metadata else None,
        created_at=created,
        expires_at=expires,
        times=times,
        output_file_id=output,
        error_file_id=error,
        total=total,
        errors=json.loads(errors) if errors else None,
        completed=int(counts[0]),
        failed=int(counts[1]),
    )
