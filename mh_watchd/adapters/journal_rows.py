"""How a Job is stored as a `jobs` row and read back, and how event/request details are stored.

Shared by the journal's parts; not part of the public API (import from mh_watchd.adapters.journal).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from typing import Any

from mh_watchd.adapters.journal_backend import Row
from mh_watchd.core.api import Style
from mh_watchd.core.jobs import TERMINAL_STATES, HoldReason, Job, JobSettings, JobState, Output

# Every Job field but `id` and `holder` is a column of the same name, which `insert` and `save`
# write (a test checks the schema agrees). `holder` and `lease_until` are the claim's columns:
# only the claim statements and the fencing in `save` write them.
CLAIM_FIELDS = frozenset({"id", "holder"})
JOB_COLUMNS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(Job) if f.name not in CLAIM_FIELDS
)


@functools.cache
def job_insert_sql(now: str) -> str:
    """INSERT of a job row with its claim; `now` is the dialect's clock expression."""
    return (
        f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}, holder, lease_until)"
        f" VALUES ({', '.join('?' for _ in JOB_COLUMNS)}, ?, {now} + ?) RETURNING id"
    )


@functools.cache
def job_update_sql(now: str) -> str:
    """UPDATE of a job row with its claim ({now} + NULL is NULL: no holder, no lease)."""
    return (
        f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in JOB_COLUMNS)}, holder = ?,"
        f" lease_until = {now} + ? WHERE id = ?"
    )


# Leaving the claim as it is (a tool's journal, with no host).
JOB_UPDATE_KEEP_CLAIM_SQL = (
    f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in JOB_COLUMNS)} WHERE id = ?"
)
TERMINAL_VALUES: tuple[str, ...] = tuple(sorted(s.value for s in TERMINAL_STATES))

# SQLite integers are signed 64-bit, but st_ino is unsigned: some network and FUSE filesystems
# hand out inode numbers >= 2**63. Store them wrapped into the signed range (a bijection, so
# equality lookups still work) rather than crash on OverflowError.
_INODE_WRAP = 1 << 64
_INODE_SIGNED_MAX = (1 << 63) - 1


def encode_inode(inode: int) -> int:
    """The signed value stored for `inode` (the schema's comments call it _encode_inode)."""
    return inode - _INODE_WRAP if inode > _INODE_SIGNED_MAX else inode


def _decode_inode(stored: int) -> int:
    return stored + _INODE_WRAP if stored < 0 else stored


def dump_detail(detail: Mapping[str, Any] | None) -> str:
    # default=str: a Path or other stray value in a detail is recorded, never a crash mid-write.
    return json.dumps(dict(detail or {}), sort_keys=True, default=str)


def _encode_settings(settings: JobSettings) -> str:
    return json.dumps(dataclasses.asdict(settings), sort_keys=True)


def _decode_settings(text: str) -> JobSettings:
    data = json.loads(text)
    data["style"] = Style(**data["style"])
    # JSON writes 60.0 back as 60.0, but a caller may have stored an int; keep floats floats.
    data["start_seconds"] = float(data["start_seconds"])
    data["max_seconds"] = float(data["max_seconds"])
    return JobSettings(**data)


def _encode_outputs(outputs: tuple[Output, ...]) -> str:
    return json.dumps([dataclasses.asdict(o) for o in outputs], sort_keys=True)


def _decode_outputs(text: str) -> tuple[Output, ...]:
    return tuple(Output(**item) for item in json.loads(text))


def job_values(job: Job) -> list[Any]:
    values: list[Any] = []
    for name in JOB_COLUMNS:
        value = getattr(job, name)
        if name == "settings":
            value = _encode_settings(value)
        elif name == "outputs":
            value = _encode_outputs(value)
        elif name == "inode":
            value = encode_inode(value)
        elif name == "original_left":
            value = int(value)
        values.append(value)
    return values


def job_from_row(row: Row) -> Job:
    data: dict[str, Any] = {name: row[name] for name in JOB_COLUMNS}
    data["id"] = row["id"]
    data["holder"] = row["holder"]
    data["settings"] = _decode_settings(data["settings"])
    data["outputs"] = _decode_outputs(data["outputs"])
    data["inode"] = _decode_inode(data["inode"])
    data["original_left"] = bool(data["original_left"])
    data["state"] = JobState(data["state"])
    if data["resume_state"] is not None:
        data["resume_state"] = JobState(data["resume_state"])
    if data["hold_reason"] is not None:
        data["hold_reason"] = HoldReason(data["hold_reason"])
    return Job(**data)
