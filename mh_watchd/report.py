"""The `status` report: built from the journal (read-only) and the config, then rendered."""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any

from mh_watchd.adapters.journal import Journal
from mh_watchd.core.config import Config
from mh_watchd.core.jobs import Job, JobState

_ACTIVE = (
    JobState.QUEUED,
    JobState.UPLOADING,
    JobState.SUBMITTING,
    JobState.RENDERING,
    JobState.DOWNLOADING,
    JobState.DELIVERING,
)


def _iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    return dt.datetime.fromtimestamp(wall, dt.UTC).isoformat(timespec="seconds")


def _daemon_running(journal: Journal) -> tuple[int | None, bool]:
    pid_text = journal.get_meta("daemon_pid")
    if not pid_text or not pid_text.isdigit():
        return None, False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return pid, False
    except PermissionError:
        return pid, True
    return pid, True


def build(journal: Journal, config: Config, *, now: float | None = None) -> dict[str, Any]:
    """Everything `status` shows, as plain data (also the `--json` document)."""
    now = time.time() if now is None else now
    pid, running = _daemon_running(journal)
    counts = journal.counts_by_folder_and_state()
    statuses = journal.folder_statuses()
    names = [f.name for f in config.folders]
    names += sorted({folder for folder, _ in counts} - set(names))
    folders = []
    for name in names:
        st = statuses.get(name)
        folders.append(
            {
                "name": name,
                "configured": config.folder(name) is not None,
                "watch_mode": st.watch_mode if st else None,
                "watch_reason": st.watch_reason if st else None,
                "outage": st.outage if st else None,
                "last_scan_at": _iso(st.last_scan_at) if st else None,
                "counts": {s: n for (f, s), n in sorted(counts.items()) if f == name},
            }
        )
    active, held, failed = [], [], []
    for job in journal.jobs(states=[*_ACTIVE, JobState.HELD]):
        if job.state is JobState.HELD:
            held.append(_held(job))
        else:
            active.append(_active(job, now))
    for job in journal.jobs(states=[JobState.FAILED]):
        if job.last_error and job.last_error.startswith("superseded:"):
            continue
        failed.append(
            {
                "id": job.id,
                "folder": job.folder,
                "file": job.rel_path,
                "why": job.last_error,
                "failed_path": job.failed_path,
                "project_id": job.project_id,
            }
        )
    day = time.strftime("%Y-%m-%d", time.localtime(now))
    tomorrow = dt.datetime.combine(
        dt.date.fromisoformat(day) + dt.timedelta(days=1), dt.time()
    ).astimezone()
    return {
        "daemon": {"pid": pid, "running": running},
        "folders": folders,
        "active": active,
        "held": held,
        "failed": failed,
        "credits": {
            "day": day,
            "spent_today": journal.credits_spent(day),
            "daily_limit": config.daemon.daily_credit_limit,
            "resets_at": tomorrow.isoformat(timespec="seconds"),
        },
    }


def _active(job: Job, now: float) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": job.id,
        "folder": job.folder,
        "file": job.rel_path,
        "state": job.state.value,
        "project_id": job.project_id,
    }
    if job.state in (JobState.UPLOADING, JobState.DOWNLOADING):
        row["progress_percent"] = round(job.progress * 100, 1)
    if job.state is JobState.RENDERING and job.render_started_at:
        row["render_seconds"] = round(now - job.render_started_at)
        row["render_status"] = job.render_status
    if job.last_error and job.attempts:
        row["last_error"] = job.last_error
        row["attempts"] = job.attempts
    return row


def _held(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "folder": job.folder,
        "file": job.rel_path,
        "hold_reason": job.hold_reason.value if job.hold_reason else None,
        "why": job.last_error,
        "resumes_as": job.resume_state.value if job.resume_state else None,
        "project_id": job.project_id,
        "service_name": job.service_name,
    }


def render(data: dict[str, Any]) -> str:
    """The report as lines for a terminal."""
    lines = []
    d = data["daemon"]
    lines.append(
        f"daemon: {'running' if d['running'] else 'not running'}"
        + (f" (pid {d['pid']})" if d["pid"] and d["running"] else "")
    )
    lines.append("")
    lines.append("folders:")
    for f in data["folders"]:
        counts = ", ".join(f"{s} {n}" for s, n in f["counts"].items()) or "no jobs"
        mode = f["watch_mode"] or "unknown"
        reason = f" ({f['watch_reason']})" if f["watch_reason"] else ""
        lines.append(f"  {f['name']}: {counts}; watch {mode}{reason}")
        if f["outage"]:
            lines.append(f"    OUTAGE: {f['outage']}")
        if not f["configured"]:
            lines.append("    (no longer in the config)")
    if data["active"]:
        lines.append("")
        lines.append("active:")
        for j in data["active"]:
            extra = ""
            if "progress_percent" in j:
                extra = f" {j['progress_percent']}%"
            if "render_seconds" in j:
                extra = f" {j['render_status']} for {j['render_seconds']} s"
            if j.get("last_error"):
                extra += f" (retrying: {j['last_error']})"
            lines.append(f"  #{j['id']} {j['folder']}/{j['file']}: {j['state']}{extra}")
    if data["held"]:
        lines.append("")
        lines.append("held:")
        for j in data["held"]:
            lines.append(f"  #{j['id']} {j['folder']}/{j['file']}: {j['hold_reason']}: {j['why']}")
    if data["failed"]:
        lines.append("")
        lines.append("failed:")
        for j in data["failed"]:
            lines.append(f"  #{j['id']} {j['folder']}/{j['file']}: {j['why']}")
    c = data["credits"]
    limit = c["daily_limit"] or "no limit"
    lines.append("")
    lines.append(
        f"credits today ({c['day']}): {c['spent_today']} spent; limit {limit}; "
        f"resets {c['resets_at']}"
    )
    return "\n".join(lines)
