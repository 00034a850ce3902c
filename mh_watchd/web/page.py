"""The web page as HTML, rendered on the server from the `status` document (`report.build`).

No framework, no external asset: the CSS is inline, the only script is a five-second refresh
that pauses while a report is open (without JavaScript a meta refresh does the same). Every
value from the journal or a file is escaped here, in `_e`, and nowhere else.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mh_watchd.report import ago, several_hosts, stale_hosts

REFRESH_SECONDS = 5

_CSS = """
:root{color-scheme:light dark;--bg:#f6f7f9;--fg:#1b1f24;--muted:#5b6470;--card:#fff;
--line:#d9dde3;--accent:#2458d6;--bad:#b42318;--warn:#9a6700;--good:#1a7f37}
@media (prefers-color-scheme:dark){:root{--bg:#0f1216;--fg:#e6e9ee;--muted:#9aa4b1;
--card:#181c22;--line:#2b313a;--accent:#7aa2ff;--bad:#ff7b72;--warn:#e3b341;--good:#56d364}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.45 system-ui,sans-serif}
main{max-width:1100px;margin:0 auto;padding:12px}
h1{font-size:1.3rem;margin:4px 0 8px}h2{font-size:1.05rem;margin:0 0 8px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px;
margin:0 0 12px}
.muted{color:var(--muted)}.bad{color:var(--bad)}.warn{color:var(--warn)}.good{color:var(--good)}
.banner{border-left:4px solid var(--warn);padding:8px 12px}
.banner.error{border-color:var(--bad)}.banner.ok{border-color:var(--good)}
.top{display:flex;flex-wrap:wrap;gap:8px;align-items:center;justify-content:space-between}
.table{overflow-x:auto}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid var(--line);vertical-align:top}
ul.jobs{list-style:none;margin:0;padding:0}
ul.jobs li{display:flex;flex-wrap:wrap;gap:4px 12px;align-items:center;padding:8px 0;
border-bottom:1px solid var(--line)}
ul.jobs li:last-child{border-bottom:0}
.job{flex:1 1 260px;min-width:0;overflow-wrap:anywhere}
.file{font-weight:600}
code,pre{font:13px/1.4 ui-monospace,monospace;overflow-wrap:anywhere}
pre{white-space:pre-wrap;background:var(--bg);padding:8px;border-radius:6px;margin:6px 0 0}
progress{width:160px;max-width:100%}
button{font:inherit;padding:6px 14px;border-radius:6px;border:1px solid var(--accent);
background:var(--accent);color:#fff;cursor:pointer}
button.quiet{background:transparent;color:var(--accent)}
button:disabled{opacity:.5;cursor:not-allowed}
form{margin:0}.actions{display:flex;flex-wrap:wrap;gap:8px;margin-top:8px}
input[type=password]{font:inherit;padding:6px;width:100%;max-width:320px}
.meter{height:10px;background:var(--line);border-radius:5px;overflow:hidden;max-width:320px}
.meter span{display:block;height:100%;background:var(--accent)}
"""

# Reload unless the tab is hidden or the reader has opened a report or is typing.
_REFRESH_SCRIPT = (
    "setInterval(function(){if(document.hidden||document.querySelector('details[open]')"
    "||document.activeElement&&document.activeElement.tagName==='INPUT')return;"
    "location.replace(location.pathname)},%d);"
)


@dataclass(frozen=True)
class PageOptions:
    """How to render: can the page retry, who serves it, what to tell the reader."""

    writable: bool
    nonce: str
    logout: bool = False
    notice: str | None = None
    error: str | None = None
    health_reasons: tuple[str, ...] = ()


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _document(title: str, body: str, nonce: str, *, refresh: bool) -> str:
    head = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="color-scheme" content="light dark">',
        '<meta name="referrer" content="same-origin">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
    ]
    if refresh:
        head.append(
            f'<noscript><meta http-equiv="refresh" content="{REFRESH_SECONDS * 2}"></noscript>'
        )
        head.append(
            f'<script nonce="{_e(nonce)}">{_REFRESH_SCRIPT % (REFRESH_SECONDS * 1000)}</script>'
        )
    return "\n".join([*head, "</head><body><main>", body, "</main></body></html>\n"])


def login_page(*, nonce: str, error: str | None = None) -> str:
    """The login form: one password field posting to /login."""
    message = f'<p class="banner error" role="alert">{_e(error)}</p>' if error else ""
    body = f"""<h1>mh-watchd</h1>
<section><h2>Log in</h2>{message}
<form method="post" action="/login">
<p><label for="token">Web token (<code>daemon.http_token</code> in the config)</label><br>
<input id="token" name="token" type="password" autocomplete="current-password" required
 autofocus></p>
<button type="submit">Log in</button></form></section>"""
    return _document("mh-watchd: log in", body, nonce, refresh=False)


def status_page(data: Mapping[str, Any], options: PageOptions) -> str:
    """The whole page for one `status` document."""
    totals: Mapping[str, int] = data.get("totals", {})
    names = _HostNames(several_hosts(data), stale_hosts(data))
    parts = [
        _header(data, options),
        _hosts(data) if names.shown else "",
        _credits(data["credits"]),
        _folders(data["folders"], names),
        _active(data["active"], totals.get("active"), names),
        _held(data["held"], options, totals.get("held"), names),
        _failed(data["failed"], options, totals.get("failed")),
        _recent(data.get("recent", [])),
    ]
    return _document("mh-watchd", "\n".join(parts), options.nonce, refresh=True)


@dataclass(frozen=True)
class _HostNames:
    """Whether the page names hosts (several share the journal), and which are stale."""

    shown: bool
    stale: set[str]

    def on(self, host: object, *, mark_stale: bool = True) -> str:
        """The words "on HOST" to put after a job or folder (with "(stale)" when it is), or
        nothing when the page names no hosts or `host` is not known."""
        if not self.shown or not host:
            return ""
        stale = mark_stale and host in self.stale
        mark = ' <span class="warn">(stale)</span>' if stale else ""
        return f' <span class="muted">on <span class="host">{_e(host)}</span></span>{mark}'


def _header(data: Mapping[str, Any], options: PageOptions) -> str:
    daemon = data["daemon"]
    shared = bool(data.get("journal", {}).get("shared"))
    here = f" on {_e(daemon.get('host'))}" if shared else ""
    if daemon["running"]:
        state = f'<span class="good">daemon running{here}</span> (pid {_e(daemon["pid"])})'
    else:
        state = f'<span class="warn">daemon not running{here}</span>'
    if shared:
        alive, total = len(daemon.get("alive_hosts", [])), len(data.get("hosts", []))
        state += f'; <a href="#hosts">{alive} of {total} host(s) alive</a>'
    logout = (
        '<form method="post" action="/logout"><button class="quiet">Log out</button></form>'
        if options.logout
        else ""
    )
    lines = [f'<div class="top"><h1>mh-watchd</h1><span>{state}</span>{logout}</div>']
    if not options.writable:
        text = _read_only_text(daemon, shared=shared)
        lines.append(f'<p class="banner" role="status">{_with_code(text)}</p>')
    for reason in options.health_reasons:
        lines.append(f'<p class="banner error" role="alert">Unhealthy: {_e(reason)}</p>')
    if options.error:
        lines.append(f'<p class="banner error" role="alert">{_e(options.error)}</p>')
    if options.notice:
        lines.append(f'<p class="banner ok" role="status">{_e(options.notice)}</p>')
    return "\n".join(lines)


def _with_code(text: str) -> str:
    """Escape `text`, then show its `backquoted` commands as <code>."""
    parts = _e(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _read_only_text(daemon: Mapping[str, Any], *, shared: bool = False) -> str:
    alive = daemon.get("alive_hosts", [])
    if shared and alive:
        return (
            "Read-only: this page is served by `mh-watchd web`. Daemons run on "
            f"{', '.join(alive)}: retry from a daemon's own page or with `mh-watchd retry` "
            "(a running host acts on it)."
        )
    if daemon["running"]:
        return (
            "Read-only: this page is served by `mh-watchd web`. The daemon "
            f"(pid {daemon['pid']}) is running: retry from its own page or with "
            "`mh-watchd retry`."
        )
    return (
        "Read-only: the daemon is not running, so Retry is off here. Start the daemon to "
        "retry from this page, or run `mh-watchd retry` (the daemon acts on it when it starts)."
    )


def _credits(credits: Mapping[str, Any]) -> str:
    spent, limit = credits["spent_today"], credits["daily_limit"]
    resets = str(credits["resets_at"]).replace("T", " ")
    if limit:
        share = min(100.0, 100.0 * spent / limit)
        bar = f'<span style="width:{share:.1f}%"></span>'
        meter = f'<div class="meter" title="{share:.0f}%">{bar}</div>'
        text = f"{_e(spent)} of {_e(limit)} credits spent today ({share:.0f}%)"
    else:
        meter, text = "", f"{_e(spent)} credits spent today (no daily limit)"
    return (
        f'<section id="credits"><h2>Credits</h2><p>{text}</p>{meter}'
        f'<p class="muted">The day ({_e(credits["day"])}) resets at {_e(resets)} local time.'
        "</p></section>"
    )


def _hosts(data: Mapping[str, Any]) -> str:
    """Each daemon using the journal: pid, version, when last seen (stale or not), jobs held."""
    rows = []
    for h in data.get("hosts", []):
        name = _e(h["name"]) + (' <span class="muted">(this host)</span>' if h["this_host"] else "")
        if h["seen_seconds_ago"] is None:
            seen = "never registered"
        else:
            seen = f"{_e(ago(h['seen_seconds_ago']))} ago"
        if h["stale"]:
            seen = f'<span class="warn">{seen} (stale)</span>'
        rows.append(
            f"<tr><td>{name}</td><td>{_e(h['pid'])}</td><td>{_e(h['version'])}</td>"
            f"<td>{seen}</td><td>{_e(h['jobs_held'])}</td></tr>"
        )
    body = "".join(rows) or '<tr><td colspan="5" class="muted">no daemon yet</td></tr>'
    journal = data.get("journal", {})
    unheld = data.get("unheld_jobs", 0)
    free = (
        f"<p>Nobody holds {_e(unheld)} unfinished job(s): a host that watches their folder "
        "takes them.</p>"
        if unheld
        else ""
    )
    stale_after = ago(journal.get("stale_after_seconds"))
    return (
        '<section id="hosts"><h2>Hosts</h2><div class="table"><table><thead><tr>'
        "<th>host</th><th>pid</th><th>version</th><th>last seen</th><th>jobs held</th>"
        f"</tr></thead><tbody>{body}</tbody></table></div>{free}"
        f'<p class="muted">Journal {_e(journal.get("where"))}; a host unseen for '
        f"{_e(stale_after)} is stale.</p></section>"
    )


def _folders(folders: Iterable[Mapping[str, Any]], names: _HostNames) -> str:
    rows = []
    for f in folders:
        counts = ", ".join(f"{_e(s)} {_e(n)}" for s, n in f["counts"].items()) or "no jobs"
        mode = _e(f["watch_mode"] or "unknown")
        why = f' <span class="muted">({_e(f["watch_reason"])})</span>' if f["watch_reason"] else ""
        why += names.on(f.get("host"), mark_stale=False)
        outage = f'<span class="bad">outage: {_e(f["outage"])}</span>' if f["outage"] else "ok"
        gone = (
            ' <span class="muted">(no longer in the config)</span>' if not f["configured"] else ""
        )
        rows.append(
            f"<tr><td>{_e(f['name'])}{gone}</td><td>{mode}{why}</td><td>{outage}</td>"
            f"<td>{counts}</td></tr>"
        )
    body = "".join(rows) or '<tr><td colspan="4" class="muted">no folders</td></tr>'
    return (
        '<section id="folders"><h2>Folders</h2><div class="table"><table><thead><tr>'
        "<th>folder</th><th>watch mode</th><th>share</th><th>jobs</th></tr></thead>"
        f"<tbody>{body}</tbody></table></div></section>"
    )


def _job_title(job: Mapping[str, Any]) -> str:
    return (
        f'<span class="muted">#{_e(job["id"])}</span> <span class="muted">{_e(job["folder"])}/'
        f'</span><span class="file">{_e(job["file"])}</span>'
    )


def _active(jobs: list[Mapping[str, Any]], total: int | None, names: _HostNames) -> str:
    items = []
    for job in jobs:
        detail = _e(job["state"]) + names.on(job.get("host"))
        if "progress_percent" in job:
            pct = job["progress_percent"]
            detail += f' <progress max="100" value="{_e(pct)}"></progress> {_e(pct)}%'
        if "render_seconds" in job:
            detail += f" ({_e(job['render_status'])}, {_e(_duration(job['render_seconds']))})"
        if job.get("last_error"):
            retrying = f"retrying (attempt {job.get('attempts')}): {job['last_error']}"
            detail += f'<br><span class="warn">{_e(retrying)}</span>'
        items.append(f'<li><div class="job">{_job_title(job)}<br>{detail}</div></li>')
    return _list_section(
        "active", "Active", items, "nothing in progress", total=total, shown="oldest"
    )


def _duration(seconds: object) -> str:
    total = int(seconds) if isinstance(seconds, int | float) else 0
    minutes, secs = divmod(total, 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _retry_button(job_id: object, options: PageOptions) -> str:
    if not options.writable:
        return '<button disabled title="the daemon is not running">Retry</button>'
    return (
        f'<form method="post" action="/retry"><input type="hidden" name="job_id" '
        f'value="{_e(job_id)}"><button type="submit">Retry</button></form>'
    )


def _retry_all(kind: str, label: str, options: PageOptions) -> str:
    if not options.writable:
        return f'<div class="actions"><button disabled>{_e(label)}</button></div>'
    return (
        f'<form class="actions" method="post" action="/retry"><input type="hidden" name="all" '
        f'value="{_e(kind)}"><button type="submit" class="quiet">{_e(label)}</button></form>'
    )


def _held(
    jobs: list[Mapping[str, Any]], options: PageOptions, total: int | None, names: _HostNames
) -> str:
    items = []
    for job in jobs:
        reason = job["hold_reason"] or "held"
        todo = job.get("what_to_do")
        advice = (
            f'<br><span class="muted">What to do: {_e(todo)}</span>'
            if todo and todo != job["why"]
            else ""
        )
        items.append(
            f'<li><div class="job">{_job_title(job)}{names.on(job.get("host"))}<br>'
            f'<span class="warn">{_e(reason)}</span>: {_e(job["why"])}{advice}</div>'
            f"{_retry_button(job['id'], options)}</li>"
        )
    extra = _retry_all("held", "Retry all held", options) if jobs else ""
    return _list_section("held", "Held", items, "nothing held", extra, total=total, shown="oldest")


def _failed(jobs: list[Mapping[str, Any]], options: PageOptions, total: int | None) -> str:
    items = []
    for job in jobs:
        report = job.get("error_json")
        todo = report.get("what_to_do") if isinstance(report, dict) else None
        advice = f'<br><span class="muted">What to do: {_e(todo)}</span>' if todo else ""
        if report is None:
            details = ""
        else:
            text = report if isinstance(report, str) else json.dumps(report, indent=2)
            where = _e(job.get("error_json_path"))
            details = f"<details><summary>{where}</summary><pre>{_e(text)}</pre></details>"
        items.append(
            f'<li><div class="job">{_job_title(job)}<br><span class="bad">{_e(job["why"])}</span>'
            f"{advice}{details}</div>{_retry_button(job['id'], options)}</li>"
        )
    extra = _retry_all("failed", "Retry all failed", options) if jobs else ""
    return _list_section(
        "failed", "Failed", items, "nothing failed", extra, total=total, shown="newest"
    )


def _recent(jobs: list[Mapping[str, Any]]) -> str:
    items = []
    for job in jobs:
        outputs = "".join(f"<br><code>{_e(path)}</code>" for path in job["outputs"])
        when = str(job["delivered_at"] or "").replace("T", " ")
        items.append(
            f'<li><div class="job">{_job_title(job)} <span class="muted">{_e(when)}</span>'
            f"{outputs}</div></li>"
        )
    return _list_section("recent", "Recent deliveries", items, "nothing delivered yet")


def _list_section(
    anchor: str,
    title: str,
    items: list[str],
    empty: str,
    extra: str = "",
    *,
    total: int | None = None,
    shown: str = "",
) -> str:
    """A section listing `items`. With `total` above their number (the status document lists
    at most `report.LIST_LIMIT` of a kind) the count is the total, and a line says so."""
    total = max(total or 0, len(items))
    count = f' <span class="muted">({total})</span>' if items else ""
    body = f'<ul class="jobs">{"".join(items)}</ul>' if items else f'<p class="muted">{empty}</p>'
    if total > len(items):
        body += (
            f'<p class="muted">and {total - len(items)} more (the {len(items)} {shown} are '
            "shown; <code>mh-watchd status --json</code> has the counts)</p>"
        )
    return f'<section id="{anchor}"><h2>{title}{count}</h2>{body}{extra}</section>'
