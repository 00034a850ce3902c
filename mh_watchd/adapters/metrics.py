"""Prometheus series for /metrics, on the daemon's own registry (never the global default one).

Series (all prefixed `mh_watchd_`):
    jobs{folder,state}                          gauge: jobs in each journal state
    credits_charged_total{folder}               counter: credits the service charged
    api_requests_total{endpoint,status}         counter: requests by answer ("none": no answer)
    api_request_seconds{endpoint}               histogram: request latency
    api_retries_total{endpoint}                 counter: requests that were retries
    last_scan_timestamp_seconds{folder}         gauge: wall-clock time of the last full scan
    bytes_uploaded_total{folder}                counter
    bytes_downloaded_total{folder}              counter
    folder_outage{folder}                       gauge: 1 while the folder is in outage
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mh_watchd.core.jobs import JobState

PREFIX = "mh_watchd_"
# Latency buckets span quick JSON calls and long streamed uploads/downloads.
API_LATENCY_BUCKETS_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


class Metrics:
    """Every series the contract names, registered on `registry` (a new one when None)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self._jobs = Gauge(
            PREFIX + "jobs",
            "Jobs in the journal by folder and state",
            ["folder", "state"],
            registry=reg,
        )
        self._credits = Counter(
            PREFIX + "credits_charged", "Credits charged by the service", ["folder"], registry=reg
        )
        self._requests = Counter(
            PREFIX + "api_requests",
            "Magic Hour API requests by endpoint and HTTP status (none: no response)",
            ["endpoint", "status"],
            registry=reg,
        )
        self._latency = Histogram(
            PREFIX + "api_request_seconds",
            "Magic Hour API request latency",
            ["endpoint"],
            buckets=API_LATENCY_BUCKETS_SECONDS,
            registry=reg,
        )
        self._retries = Counter(
            PREFIX + "api_retries",
            "Magic Hour API requests that were retries",
            ["endpoint"],
            registry=reg,
        )
        self._last_scan = Gauge(
            PREFIX + "last_scan_timestamp_seconds",
            "Unix time of the last completed scan of each folder",
            ["folder"],
            registry=reg,
        )
        self._uploaded = Counter(
            PREFIX + "bytes_uploaded", "Bytes uploaded to the service", ["folder"], registry=reg
        )
        self._downloaded = Counter(
            PREFIX + "bytes_downloaded", "Bytes of outputs downloaded", ["folder"], registry=reg
        )
        self._outage = Gauge(
            PREFIX + "folder_outage",
            "1 while the folder is in outage, else 0",
            ["folder"],
            registry=reg,
        )
        self._lock = threading.Lock()
        self._job_folders: set[str] = set()

    def set_jobs(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Set the jobs gauge from (folder, state) -> count; every state not given becomes 0.

        Folders seen before but absent now are zeroed too, so a series never goes stale.
        """
        with self._lock:
            folders = self._job_folders | {folder for folder, _ in counts}
            self._job_folders = folders
            states = [state.value for state in JobState]
            states += sorted({state for _, state in counts} - set(states))
            for folder in folders:
                for state in states:
                    self._jobs.labels(folder=folder, state=state).set(
                        counts.get((folder, state), 0)
                    )

    def credits_charged(self, folder: str, credits: int) -> None:
        """Add credits charged for a job in `folder` (negative values, refunds, are ignored)."""
        if credits > 0:
            self._credits.labels(folder=folder).inc(credits)

    def api_request(self, endpoint: str, status: int | None, seconds: float, retried: bool) -> None:
        """Record one API request: its answer (None: no response), latency, and whether a retry."""
        status_label = "none" if status is None else str(status)
        self._requests.labels(endpoint=endpoint, status=status_label).inc()
        self._latency.labels(endpoint=endpoint).observe(max(seconds, 0.0))
        retries = self._retries.labels(endpoint=endpoint)
        if retried:
            retries.inc()

    def scanned(self, folder: str, at: float) -> None:
        """Record that a full scan of `folder` finished at Unix time `at`."""
        self._last_scan.labels(folder=folder).set(at)

    def bytes_uploaded(self, folder: str, n: int) -> None:
        """Add `n` bytes uploaded for `folder`."""
        if n > 0:
            self._uploaded.labels(folder=folder).inc(n)

    def bytes_downloaded(self, folder: str, n: int) -> None:
        """Add `n` bytes downloaded for `folder`."""
        if n > 0:
            self._downloaded.labels(folder=folder).inc(n)

    def outage(self, folder: str, active: bool) -> None:
        """Set whether `folder` is in outage (1) or not (0)."""
        self._outage.labels(folder=folder).set(1 if active else 0)
