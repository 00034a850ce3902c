"""The journal's public face: split into parts, still one `Journal` importable from one module."""

from __future__ import annotations

import inspect

import mh_watchd.adapters.journal as journal_module
from mh_watchd.adapters.journal import Journal

PUBLIC_NAMES = {
    "BUSY_TIMEOUT_MS",
    "JOURNAL_FILENAME",
    "LOCK_FILENAME",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "STATE_DIR_MODE",
    "FolderStatus",
    "BulkEvent",
    "ClaimLost",
    "Claimed",
    "HostInfo",
    "Listening",
    "OverBudget",
    "JobEvent",
    "Journal",
    "JournalConflict",
    "Request",
    "apply_migrations",
    "host_name",
    "open_journal",
}

PUBLIC_METHODS = {
    "open",
    "close",
    "path",
    "readonly",
    "acquire_lock",
    "writable_check",
    "insert",
    "insert_history",
    "save",
    "get",
    "by_project_id",
    "jobs",
    "newest",
    "unfinished",
    "some_jobs",
    "counts_with_error_prefix",
    "failed_unfiled",
    "latest_for_path",
    "find_done_version",
    "known_version",
    "events",
    "counts_by_folder_and_state",
    "set_progress",
    "credits_spent",
    "book_charge",
    "add_request",
    "pending_requests",
    "request",
    "finish_request",
    "set_folder_status",
    "folder_statuses",
    "set_meta",
    "get_meta",
    "compact_history",
    "backup",
    # several hosts (issue 13)
    "where",
    "shared",
    "host",
    "set_host",
    "listen",
    "lease_seconds",
    "register_host",
    "hosts",
    "database_now",
    "claim_jobs",
    "renew_claims",
    "release_claims",
    "holders",
    "claim_request",
}


def test_every_public_name_is_importable_from_the_journal_module() -> None:
    assert set(journal_module.__all__) == PUBLIC_NAMES
    for name in PUBLIC_NAMES:
        assert hasattr(journal_module, name), name


def test_journal_has_exactly_its_public_methods() -> None:
    public = {name for name in dir(Journal) if not name.startswith("_")}
    assert public == PUBLIC_METHODS


def test_journal_open_is_still_a_classmethod_with_the_same_parameters() -> None:
    assert inspect.ismethod(Journal.open) and Journal.open.__self__ is Journal
    assert list(inspect.signature(Journal.open).parameters) == [
        "state_dir",
        "readonly",
        "url",
        "timeout_seconds",
    ]
