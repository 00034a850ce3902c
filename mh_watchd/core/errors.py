"""The project's one exception tree, classified by what the caller must do.

    MhWatchdError
    ├── ConfigError              fatal at startup; `problems` lists every issue with its key path
    ├── StateDirError            fatal: the state_dir is unusable (exit 69)
    │   └── AlreadyRunningError  fatal: another daemon holds the lock (exit 75)
    ├── MediaError               give up on this file: not a readable video
    ├── SourceChangedError       the file changed or vanished mid-upload: take it as a new version
    │   └── NotACandidateError   an inbox name that is a link or not a regular file: never an input
    ├── InboxUnavailableError    the inbox itself is gone or unreadable: an outage, never a loss
    └── ApiError                 anything the Magic Hour service (or the way to it) did
        ├── TransientApiError    retry later (honour `retry_after_seconds` when set)
        │   ├── NotSentError     the request surely never reached the service (connect, DNS, pool)
        │   └── RefusedError     the service refused it, nothing was created (429, 502, 503)
        ├── AmbiguousCreateError a create that may have reached the service; no id came back
        ├── UrlExpiredError      a presigned upload/download URL answered 403/404: get a fresh one
        ├── PermanentApiError    give up on this job (400, 403, 422)
        │   └── NotFoundError    404 on a /v1/ route
        └── AccountApiError      pause everything that needs the account
            ├── AuthError        401: the key is wrong or revoked
            └── CreditsError     402: not enough credits

Every ApiError keeps the operation it came from, the HTTP status (None when no response
arrived) and the service's own `{"message": ...}` text. No exception text ever holds the key.
"""

from __future__ import annotations


class MhWatchdError(Exception):
    """Root of every error mh-watchd raises on purpose."""


class ConfigError(MhWatchdError):
    """The configuration is invalid; `problems` holds one line per problem, each with its path."""

    def __init__(self, problems: list[str], warnings: list[str] | None = None) -> None:
        self.problems = list(problems)
        self.warnings = list(warnings or [])
        super().__init__("\n".join(self.problems) or "invalid configuration")


class StateDirError(MhWatchdError):
    """The state_dir cannot be used (missing, unwritable, on a network filesystem)."""


class AlreadyRunningError(StateDirError):
    """Another daemon holds the state_dir's lock; `pid` names it when known."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        self.pid = pid
        super().__init__(message)


class MediaError(MhWatchdError):
    """A file is not a readable video (empty, truncated, not a video at all)."""


class ApiError(MhWatchdError):
    """Something the service (or the network to it) did; see the module docstring for the tree."""

    def __init__(
        self,
        message: str,
        *,
        operation: str,
        status: int | None = None,
        service_message: str | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        self.operation = operation
        self.status = status
        self.service_message = service_message
        self.retry_after_seconds = retry_after_seconds
        super().__init__(message)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self)!r}, operation={self.operation!r}, "
            f"status={self.status!r})"
        )


class TransientApiError(ApiError):
    """Worth retrying later; nothing permanent is known to be wrong."""


class NotSentError(TransientApiError):
    """The request never reached the service (connect refused, DNS, connect or pool timeout)."""


class RefusedError(TransientApiError):
    """The service answered 429, 502 or 503: it refused, and created nothing."""


class AmbiguousCreateError(ApiError):
    """A create that may have reached the service without an id coming back. Never resend."""


class UrlExpiredError(ApiError):
    """A presigned upload or download URL answered 403/404; ask the API for a fresh one."""


class PermanentApiError(ApiError):
    """The service rejected this job for good (400, 403, 422)."""


class NotFoundError(PermanentApiError):
    """404 on a /v1/ route: an unknown or deleted project."""


class AccountApiError(ApiError):
    """A problem with the account that stops every job, not just this one."""


class AuthError(AccountApiError):
    """401: the API key is missing, wrong or revoked."""


class CreditsError(AccountApiError):
    """402: the account does not have enough credits."""


class SourceChangedError(MhWatchdError):
    """The file being uploaded changed size or content while it was read; upload it again."""


class NotACandidateError(SourceChangedError):
    """An inbox name that is a symlink (`link` True) or not a regular file: never an input.

    It is never read, moved or sent. A SourceChangedError, so a job whose original's name
    became one ends `superseded` before any create.
    """

    def __init__(self, message: str, *, link: bool = False) -> None:
        self.link = link
        super().__init__(message)


class InboxUnavailableError(MhWatchdError):
    """The inbox itself vanished or stopped answering mid-step: hold the job as an outage."""
