"""The page shows at most the status document's capped lists, and says how many more there
are: a year's journal with thousands of failed jobs stays a page, and the count stays true."""

from __future__ import annotations

from mh_watchd.web.page import PageOptions, status_page


def document(failed: int, total_failed: int) -> dict[str, object]:
    rows = [
        {"id": i, "folder": "anime", "file": f"f{i}.mp4", "why": "bad", "error_json": None}
        for i in range(failed)
    ]
    return {
        "daemon": {"running": True, "pid": 1},
        "credits": {
            "spent_today": 0,
            "daily_limit": 0,
            "day": "2026-12-05",
            "resets_at": "2026-12-06T00:00:00+00:00",
        },
        "folders": [],
        "active": [],
        "held": [],
        "failed": rows,
        "recent": [],
        "totals": {"active": 0, "held": 0, "failed": total_failed},
    }


def test_a_capped_list_shows_the_true_total_and_how_many_more() -> None:
    html = status_page(document(3, 5000), PageOptions(writable=True, nonce="n"))
    failed = html[html.index('id="failed"') :]
    assert "(5000)" in failed
    assert "and 4997 more (the 3 newest are shown" in failed


def test_an_uncapped_list_says_nothing_more() -> None:
    html = status_page(document(3, 3), PageOptions(writable=True, nonce="n"))
    failed = html[html.index('id="failed"') :]
    assert "(3)" in failed and "more (the" not in failed
