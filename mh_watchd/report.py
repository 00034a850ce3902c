"""The `status` report: built from the journal (read-only) and the config, then rendered."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mh_watchd.adapters.journal import Journal, host_name
from mh_watchd.core import naming
from mh_watchd.core.config import Config
from mh_watchd.core.jobs import HoldReason, Job, JobState

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


# How a daemon from before the `superseded` state recorded one (the journal migrates such rows;
# a row written by such a daemon since is still shown as what it is).
LEGACY_SUPERSEDED_PREFIX = "superseded:"


def is_superseded(job: Job) -> bool:
    """True for a superseded job, however it was recorded (never a failure needing action)."""
    if job.state is JobState.SUPERSEDED:
        return True
    return (
        job.state is JobState.FAILED
        and job.last_error is not None
        and job.last_error.startswith(LEGACY_SUPERSEDED_PREFIX)
    )


def superseded_message(job: Job, newer: Job | None) -> str:
    """Why `retry` refuses a superseded job, naming the job that holds the newer version."""
    if newer is not None and newer.id is not None and job.id is not None and newer.id > job.id:
        return (
            f"job {job.id} was superseded: the file changed before its upload finished; "
            f"job {newer.id} holds the newer version"
        )
    return (
        f"job {job.id} was superseded: the file changed or vanished before its upload "
        "finished; no newer version has been taken (a changed file is, once it settles)"
    )


# How many jobs each list of the report (active, held, failed) shows at most; the folder counts
# and the `*_total` numbers stay exact. A journal of years holds tens of thousands of failed jobs,
# and `status` must stay fast (issue 13: < 200 ms at a million finished jobs).
LIST_LIMIT = 100


def build(journal: Journal, config: Config, *, now: float | None = None) -> dict[str, Any]:
    """Everything `status` shows, as plain data (also the `--json` document).

    Lists hold at most LIST_LIMIT jobs each (active and held: the oldest; failed: the newest),
    with `totals` saying how many there are in all. `hosts` lists the daemons that use the
    journal (several on a shared one), each with the unfinished jobs it holds; the active and
    held rows name the host holding each job.
    """
    now = time.time() if now is None else now
    this_host = host_name(config.daemon)
    hosts = build_hosts(journal, config, this_host)
    counts = journal.counts_by_folder_and_state()
    # Recorded as failed by an older daemon: count those as what they are.
    legacy = journal.counts_with_error_prefix(JobState.FAILED, LEGACY_SUPERSEDED_PREFIX)
    for folder, n in legacy.items():
        key = (folder, JobState.FAILED.value)
        counts[key] -= n
        if not counts[key]:
            del counts[key]
        new_key = (folder, JobState.SUPERSEDED.value)
        counts[new_key] = counts.get(new_key, 0) + n
    active = [_active(job, now) for job in journal.some_jobs(_ACTIVE, limit=LIST_LIMIT)]
    held = [build_held_row(job) for job in journal.some_jobs([JobState.HELD], limit=LIST_LIMIT)]
    # Superseded jobs are history (the folder counts), never failures needing action.
    newest_failed = journal.some_jobs(
        [JobState.FAILED],
        limit=LIST_LIMIT,
        newest_first=True,
        without_error_prefix=LEGACY_SUPERSEDED_PREFIX,
    )
    failed = [_failed_row(job) for job in reversed(newest_failed)]
    day = time.strftime("%Y-%m-%d", time.localtime(now))
    tomorrow = dt.datetime.combine(
        dt.date.fromisoformat(day) + dt.timedelta(days=1), dt.time()
    ).astimezone()
    return {
        "daemon": _daemon(journal, this_host, hosts["hosts"]),
        "journal": {
            "where": journal.where,
            "shared": journal.shared,
            "lease_seconds": config.daemon.lease_seconds,
            "stale_after_seconds": hosts["stale_after_seconds"],
        },
        "hosts": hosts["hosts"],
        "unheld_jobs": hosts["unheld_jobs"],
        "folders": _folders(journal, config, counts),
        "active": active,
        "held": held,
        "failed": failed,
        "totals": _totals(counts),
        "recent": recent_deliveries(journal),
        "credits": {
            "day": day,
            "spent_today": journal.credits_spent(day),
            "daily_limit": config.daemon.daily_credit_limit,
            "resets_at": tomorrow.isoformat(timespec="seconds"),
        },
    }


def _folders(
    journal: Journal, config: Config, counts: dict[tuple[str, str], int]
) -> list[dict[str, Any]]:
    """Each folder (the configured ones first, then those only the journal knows) with its
    job counts and how it was last watched, by which host."""
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
                "host": st.host if st else None,
                "counts": {s: n for (f, s), n in sorted(counts.items()) if f == name},
            }
        )
    return folders


# A host not seen (no lease renewal) for this many leases is shown as stale: it stopped, or
# lost the database; its jobs went (or go) to the other hosts once its leases ran out.
STALE_LEASES = 3


def build_hosts(journal: Journal, config: Config, this_host: str) -> dict[str, Any]:
    """The daemons that use the journal (`journal.hosts()`, plus any host that holds jobs
    without having registered), each with how long ago it was last seen on the database's
    clock, whether that makes it stale, and how many unfinished jobs it holds; and how many
    unfinished jobs nobody holds. Three queries, whatever the journal's size."""
    stale_after = STALE_LEASES * config.daemon.lease_seconds
    held = journal.holders()
    known = journal.hosts()
    db_now = journal.database_now() if known else 0.0
    rows = []
    for info in known:
        ago = max(0.0, db_now - info.seen_at)
        stale = ago > stale_after
        if stale and not journal.shared and info.name == this_host:
            # One host (SQLite) renews nothing while it runs (an idle daemon must not write):
            # it is alive while its recorded pid is.
            stale = not _daemon_running(journal)[1]
        rows.append(
            {
                "name": info.name,
                "this_host": info.name == this_host,
                "pid": info.pid,
                "version": info.version,
                "started_at": _iso(info.started_at),
                "seen_at": _iso(info.seen_at),
                "seen_seconds_ago": round(ago),
                "stale": stale,
                "jobs_held": held.get(info.name, 0),
            }
        )
    names = {info.name for info in known}
    for name in sorted(set(held) - names - {""}):
        rows.append(  # holds jobs but never said it runs: nothing known of it but its jobs
            {
                "name": name,
                "this_host": name == this_host,
                "pid": None,
                "version": None,
                "started_at": None,
                "seen_at": None,
                "seen_seconds_ago": None,
                "stale": True,
                "jobs_held": held[name],
            }
        )
    return {"hosts": rows, "unheld_jobs": held.get("", 0), "stale_after_seconds": stale_after}


def _daemon(journal: Journal, this_host: str, hosts: list[dict[str, Any]]) -> dict[str, Any]:
    """Is this host's daemon running? On SQLite (one machine) by the pid it recorded; on a
    shared journal by when this host was last seen (a pid means nothing on another machine),
    with every host seen lately in `alive_hosts`."""
    alive = [h["name"] for h in hosts if not h["stale"]]
    if not journal.shared:
        pid, running = _daemon_running(journal)
        return {"pid": pid, "running": running, "host": this_host, "alive_hosts": alive}
    mine = next((h for h in hosts if h["name"] == this_host), None)
    return {
        "pid": mine["pid"] if mine else None,
        "running": bool(mine and not mine["stale"]),
        "host": this_host,
        "alive_hosts": alive,
    }


def _totals(counts: dict[tuple[str, str], int]) -> dict[str, int]:
    """How many jobs the active, held and failed lists would hold unbounded (exact)."""
    by_state: dict[str, int] = {}
    for (_, state), n in counts.items():
        by_state[state] = by_state.get(state, 0) + n
    return {
        "active": sum(by_state.get(s.value, 0) for s in _ACTIVE),
        "held": by_state.get(JobState.HELD.value, 0),
        "failed": by_state.get(JobState.FAILED.value, 0),
    }


# How many delivered jobs the report lists, newest first, and how much of an .error.json it reads.
RECENT_DELIVERIES = 10
ERROR_REPORT_MAX_BYTES = 16 * 1024


def recent_deliveries(journal: Journal, limit: int = RECENT_DELIVERIES) -> list[dict[str, Any]]:
    """The newest `done` jobs (by when they finished), with where their outputs went."""
    done = journal.newest(JobState.DONE, limit)
    return [
        {
            "id": job.id,
            "folder": job.folder,
            "file": job.rel_path,
            "delivered_at": _iso(job.updated_at),
            "outputs": [o.final_path for o in job.outputs if o.final_path],
            "original": job.archive_path,
            "credits": job.credits_final or job.credits_charged,
        }
        for job in done
    ]


def error_report_path(job: Job) -> Path | None:
    """Where the failed folder put this job's `<name>.error.json`, None when it has none."""
    if not job.failed_path:
        return None
    failed = Path(job.failed_path)
    return failed.with_name(naming.error_json_name(failed.name))


def read_error_report(path: Path) -> dict[str, Any] | str | None:
    """The report's JSON object (its text if it is not JSON), None when it is not there.

    Opened without following links and only as a regular file, at most 16 KiB: a link
    planted in a failed folder never shows another file on the page.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        data = f.read(ERROR_REPORT_MAX_BYTES)
    text = data.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    return parsed if isinstance(parsed, dict) else text


def _failed_row(job: Job) -> dict[str, Any]:
    report_path = error_report_path(job)
    return {
        "id": job.id,
        "folder": job.folder,
        "file": job.rel_path,
        "why": job.last_error or "no reason was recorded; see the .error.json beside it",
        "failed_path": job.failed_path,
        "project_id": job.project_id,
        "error_json_path": str(report_path) if report_path else None,
        "error_json": read_error_report(report_path) if report_path else None,
    }


def _active(job: Job, now: float) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": job.id,
        "folder": job.folder,
        "file": job.rel_path,
        "state": job.state.value,
        "project_id": job.project_id,
        "host": job.holder,
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


def hold_explanation(job: Job) -> str:
    """What a held job waits for and what the user can do, in plain words.

    Used when the journal has no `last_error` for the hold (crash recovery holds a job that was
    inside its create request without one), so `status` never shows "None".
    """
    retry = f"mh-watchd retry {job.id}"
    reason = job.hold_reason
    if reason is HoldReason.AMBIGUOUS_CREATE:
        name = repr(job.service_name) if job.service_name else "this file's name"
        return (
            "the daemon stopped inside the create request, so Magic Hour may have started it: "
            f"look for {name} in the web app, then run {retry} (it creates again)"
        )
    if reason is HoldReason.AUTH:
        return (
            "the API key was refused (401); put a new key in place and reload (SIGHUP) or "
            "restart the daemon"
        )
    if reason is HoldReason.CREDITS:
        return (
            "not enough credits (402); it resumes by itself once the account has enough, "
            "checked every 10 minutes"
        )
    if reason is HoldReason.DAILY_LIMIT:
        return (
            "it would cross daemon.daily_credit_limit today; it resumes by itself when the "
            "day turns"
        )
    if reason is HoldReason.OUTAGE:
        return (
            "the inbox is missing, unreadable or unmounted; it resumes by itself once the "
            "folder is back"
        )
    if reason is HoldReason.OUTPUT_UNAVAILABLE:
        return (
            "the outbox or archive is missing, unwritable or full; it resumes by itself once "
            "it is writable (the render stays downloadable at Magic Hour)"
        )
    if reason is HoldReason.RENDER_OVERDUE:
        return (
            "the render is past api.render_timeout_minutes; it is still checked hourly and "
            f"delivered if it completes, or run {retry} to render it again"
        )
    return f"held without a recorded reason; run {retry} to check it again now"


def build_held_row(job: Job) -> dict[str, Any]:
    """One held job as `status` shows it; `why` is always a sentence, never None."""
    return {
        "id": job.id,
        "folder": job.folder,
        "file": job.rel_path,
        "hold_reason": job.hold_reason.value if job.hold_reason else None,
        "why": job.last_error or hold_explanation(job),
        "what_to_do": hold_explanation(job),
        "resumes_as": job.resume_state.value if job.resume_state else None,
        "project_id": job.project_id,
        "service_name": job.service_name,
        "host": job.holder,
    }


def render(data: dict[str, Any]) -> str:
    """The report as lines for a terminal."""
    several = several_hosts(data)
    stale = stale_hosts(data)
    lines = [_daemon_line(data, several)]
    if several:
        lines += _hosts_lines(data)
    lines.append("")
    lines.append("folders:")
    for f in data["folders"]:
        counts = ", ".join(f"{s} {n}" for s, n in f["counts"].items()) or "no jobs"
        mode = f["watch_mode"] or "unknown"
        reason = f" ({f['watch_reason']})" if f["watch_reason"] else ""
        by = f", reported by {f['host']}" if several and f.get("host") else ""
        lines.append(f"  {f['name']}: {counts}; watch {mode}{reason}{by}")
        if f["outage"]:
            lines.append(f"    OUTAGE: {f['outage']}")
        if not f["configured"]:
            lines.append("    (no longer in the config)")
    totals = data.get("totals", {})
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
            name = _job_name(j, several, stale)
            lines.append(f"  {name}: {j['state']}{extra}")
        lines += _more(totals.get("active", 0), len(data["active"]), "oldest")
    if data["held"]:
        lines.append("")
        lines.append("held:")
        for j in data["held"]:
            reason = j["hold_reason"] or "held"
            lines.append(f"  {_job_name(j, several, stale)}: {reason}: {j['why']}")
        lines += _more(totals.get("held", 0), len(data["held"]), "oldest")
    if data["failed"]:
        lines.append("")
        lines.append("failed:")
        for j in data["failed"]:
            lines.append(f"  #{j['id']} {j['folder']}/{j['file']}: {j['why']}")
        lines += _more(totals.get("failed", 0), len(data["failed"]), "newest")
    c = data["credits"]
    limit = c["daily_limit"] or "no limit"
    lines.append("")
    lines.append(
        f"credits today ({c['day']}): {c['spent_today']} spent; limit {limit}; "
        f"resets {c['resets_at']}"
    )
    return "\n".join(lines)


def several_hosts(data: Mapping[str, Any]) -> bool:
    """True when the report is worth naming hosts in: a shared journal, or a SQLite one that
    knows a host other than this one (the machine was renamed, or daemon.host_name changed)."""
    if data.get("journal", {}).get("shared"):
        return True
    return any(not h["this_host"] for h in data.get("hosts", []))


def stale_hosts(data: Mapping[str, Any]) -> set[str]:
    """The hosts the report marks stale (not seen for STALE_LEASES leases)."""
    return {h["name"] for h in data.get("hosts", []) if h["stale"]}


def _job_name(job: dict[str, Any], several: bool, stale: set[str]) -> str:
    """`#id folder/file`, then `on HOST` (stale or not) when several hosts share the journal."""
    name = f"#{job['id']} {job['folder']}/{job['file']}"
    host = job.get("host")
    if several and host:
        name += f" on {host}" + (" (stale)" if host in stale else "")
    return name


def ago(seconds: float | None) -> str:
    """A time span in the largest unit that fits: "12 s", "4 min", "3 h", "2 d"."""
    if seconds is None:
        return "never"
    whole = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if whole >= size:
            return f"{whole // size} {unit}"
    return f"{whole} s"


def _daemon_line(data: dict[str, Any], several: bool) -> str:
    d = data["daemon"]
    if not data.get("journal", {}).get("shared"):
        return f"daemon: {'running' if d['running'] else 'not running'}" + (
            f" (pid {d['pid']})" if d["pid"] and d["running"] else ""
        )
    here = (
        f"running on {d['host']} (pid {d['pid']})"
        if d["running"]
        else (f"not running on {d['host']}")
    )
    alive = d.get("alive_hosts", [])
    total = len(data.get("hosts", []))
    return f"daemon: {here}; {len(alive)} of {total} host(s) alive"


def _hosts_lines(data: dict[str, Any]) -> list[str]:
    """The hosts section: each host, when it was last seen, and the jobs it holds."""
    journal = data.get("journal", {})
    stale_after = ago(journal.get("stale_after_seconds"))
    lines = ["", f"hosts (journal {journal.get('where')}; stale when unseen for {stale_after}):"]
    for h in data["hosts"]:
        name = h["name"] + (" (this host)" if h["this_host"] else "")
        facts = []
        if h["pid"] is not None:
            facts.append(f"pid {h['pid']}")
        if h["version"]:
            facts.append(f"version {h['version']}")
        if h["seen_seconds_ago"] is None:
            facts.append("never registered")
        else:
            facts.append(f"seen {ago(h['seen_seconds_ago'])} ago")
        if h["stale"]:
            facts.append("STALE")
        jobs = h["jobs_held"]
        lines.append(f"  {name}: {', '.join(facts)}; holds {jobs} job{'s' if jobs != 1 else ''}")
    if not data["hosts"]:
        lines.append("  no daemon has used this journal yet")
    unheld = data.get("unheld_jobs", 0)
    if unheld:
        lines.append(
            f"  nobody holds {unheld} unfinished job{'s' if unheld != 1 else ''} "
            "(free: a host that watches their folder takes them)"
        )
    return lines


def _more(total: int, shown: int, which: str) -> list[str]:
    """The line under a cut list: how many more there are (the counts above are exact)."""
    if total <= shown:
        return []
    return [f"  ... and {total - shown} more (the {shown} {which} are shown)"]
