"""The running daemon's parts, each owning one concern; `mh_watchd.daemon` wires them.

- `loop`: the queue of messages and the heap of timers, on one thread.
- `context`: what every part shares (config, journal, clock, the folders, the journal gate).
- `jobbook`: the journal's unfinished jobs, every job write, and the jobs' due timers.
- `folders`: per-folder supervisors: checks with a deadline, watchers, rescans.
- `intake`: events, stat passes, settling, and taking files in as jobs.
- `scheduler`: which job's next step starts, under the upload, render and credit limits.
- `outcomes`: a finished step's outcome applied to the journal as one legal move.
- `failures`: filing a failed job's original away, now or once its share is back.
- `account`: the 401/402 gate and the account probe that lifts it.
- `requests`: `mh-watchd retry` and friends, handed over through the journal.
- `reporter`: health, progress, systemd STATUS and watchdog pings, alerts.

Imports go one way: daemon -> service -> runner -> adapters -> core.
"""
