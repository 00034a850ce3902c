"""The account gate: a 401 or 402 stops new uploads and creates, and a probe of
`GET /v1/account` every `account_probe_seconds` lifts it (auth holds first, then credits holds
in queue order while the balance covers each estimate)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

import structlog

from mh_watchd.adapters.magic_hour import MagicHourClient
from mh_watchd.core.errors import AuthError, CreditsError, TransientApiError
from mh_watchd.core.jobs import HoldReason
from mh_watchd.service.context import Context
from mh_watchd.service.jobbook import JobBook
from mh_watchd.service.logctx import job_context

log = structlog.get_logger("mh_watchd")

_ACCOUNT_HOLDS = (HoldReason.AUTH, HoldReason.CREDITS)


class AccountGate:
    """Whether the account lets new work start, and the probe that finds out."""

    def __init__(
        self,
        ctx: Context,
        book: JobBook,
        *,
        client: Callable[[], MagicHourClient],
        probe_seconds: float,
    ) -> None:
        self._ctx = ctx
        self._book = book
        self._client = client
        self.probe_seconds = probe_seconds
        self.block: HoldReason | None = None
        self._last_probe: float | None = None
        self._future: Future[tuple[str, int | None]] | None = None

    def blocked(self, reason: HoldReason) -> None:
        """A step met 401 or 402: hold new work; the next probe is one interval away."""
        self.block = reason
        self._last_probe = self._ctx.monotonic()

    def unblocked(self) -> None:
        """A create went through: the account is fine."""
        self.block = None

    def recheck_now(self) -> None:
        """Probe at the next chance (a retry request, a new token)."""
        self._last_probe = None
        self._ctx.dirty = True

    def schedule(self) -> None:
        """Set the probe's timer while the gate is shut or jobs wait on the account."""
        ctx = self._ctx
        if self._future is not None or ctx.stopping:
            return
        held = any(j.hold_reason in _ACCOUNT_HOLDS for j in self._book.jobs.values())
        if self.block is None and not held:
            ctx.loop.cancel("account-probe")
            return
        when = ctx.monotonic()
        if self._last_probe is not None:
            when = self._last_probe + self.probe_seconds
        ctx.loop.at(when, self._probe, key="account-probe", replace=True)

    def _probe(self) -> None:
        ctx = self._ctx
        if self._future is not None or ctx.stopping:
            return
        self._last_probe = ctx.monotonic()
        client = self._client

        def probe() -> tuple[str, int | None]:
            try:
                account = client().get_account()
            except AuthError:
                return "auth", None
            except CreditsError:
                return "credits", None
            except TransientApiError as exc:
                return f"unreachable: {exc}", None
            return "ok", account.credits

        self._future = ctx.api_pool.submit(probe)
        ctx.post_result(self._future, self._probed)

    def _probed(self, fut: Future[tuple[str, int | None]]) -> None:
        self._future = None
        self._ctx.dirty = True
        if self._ctx.gate.closed:
            self._last_probe = None  # releases are journal writes: probe again once it opens
            return
        try:
            result, credits = fut.result()
        except Exception as exc:
            log.warning("account.probe_failed", error=str(exc))
            return
        if result == "auth":
            self.block = HoldReason.AUTH
            log.warning("account.key_refused", hint="fix the API key, then reload (SIGHUP)")
            return
        if result != "ok":
            log.info("account.probe_inconclusive", result=result)
            return
        self._release_holds(credits or 0)
        log.info("account.checked", credits=credits, still_short=self.block is not None)

    def _release_holds(self, balance: int) -> None:
        jobs = self._book.unfinished()
        for job in jobs:
            if job.hold_reason is HoldReason.AUTH:
                with job_context(job):
                    self._book.release(job)
        blocked = False
        for job in jobs:
            if job.hold_reason is not HoldReason.CREDITS:
                continue
            need = job.credits_estimate or 0
            if balance >= need and not blocked:
                balance -= need
                with job_context(job):
                    self._book.release(job)
            else:
                blocked = True
        self.block = HoldReason.CREDITS if blocked else None
