"""The journal's per-folder watch status and its small key/value facts (meta)."""

from __future__ import annotations

from dataclasses import dataclass

from mh_watchd.adapters.journal_connection import JournalConnection


@dataclass(frozen=True)
class FolderStatus:
    """How the daemon last saw one folder: watch mode and why, outage, last full scan."""

    folder: str
    watch_mode: str
    watch_reason: str
    outage: str | None
    last_scan_at: float | None
    updated_at: float
    host: str | None = None  # the daemon that recorded it (several may watch one folder)


class FoldersAndMeta(JournalConnection):
    """The `folders` table (one status row per folder) and the `meta` key/value table."""

    def set_folder_status(
        self,
        folder: str,
        *,
        watch_mode: str,
        watch_reason: str,
        outage: str | None,
        last_scan_at: float | None,
        at: float,
    ) -> None:
        """Record how the daemon watches `folder` now (replacing what was recorded before)."""
        with self._writing() as conn:
            conn.execute(
                "INSERT INTO folders (name, watch_mode, watch_reason, outage, last_scan_at,"
                " updated_at, host) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE"
                " SET watch_mode = excluded.watch_mode, watch_reason = excluded.watch_reason,"
                " outage = excluded.outage, last_scan_at = excluded.last_scan_at,"
                " updated_at = excluded.updated_at, host = excluded.host",
                (folder, watch_mode, watch_reason, outage, last_scan_at, at, self._host),
            )

    def folder_statuses(self) -> dict[str, FolderStatus]:
        """Return the last recorded status of every folder, by folder name."""
        with self._reading() as conn:
            rows = conn.execute("SELECT * FROM folders ORDER BY name").fetchall()
        return {
            row["name"]: FolderStatus(
                folder=row["name"],
                watch_mode=row["watch_mode"],
                watch_reason=row["watch_reason"],
                outage=row["outage"],
                last_scan_at=row["last_scan_at"],
                updated_at=row["updated_at"],
                host=row["host"],
            )
            for row in rows
        }

    def set_meta(self, key: str, value: str) -> None:
        """Store a small fact (daemon pid, heartbeat, notes) under `key`, replacing the old one."""
        with self._writing() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def get_meta(self, key: str) -> str | None:
        """Return the fact stored under `key`, or None."""
        with self._reading() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row["value"]) if row is not None else None
