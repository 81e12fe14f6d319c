"""report.html in a real headless browser: it renders, logs no console error, requests nothing.

Chromium comes from Debian's package: ``make test`` installs it (``apt-get install -y chromium``)
when it is missing and the user is root, as on CI; elsewhere this test is skipped with the reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import completed_row, eval_curve
from headless import Chromium, find_chromium
from orchestrator.report.render import build_report
from orchestrator.results import ResultsStore

CHROMIUM = find_chromium()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="chromium is not installed: `make test` installs it as root (apt-get install -y chromium); "
               "or install it yourself to run the browser test",
    ),
]


def _job(job: Path) -> Path:
    """A 2 x 2 sweep over two seeds with a failure: every section of a training report."""
    store = ResultsStore(job)
    for cell, base in (("gru", 1.0), ("lstm", 1.3)):
        for bidir in (False, True):
            for seed in (0, 1):
                final = base + 0.1 * bidir + 0.02 * seed
                config = {"model": {"cell": cell, "bidirectional": bidir}, "train": {"seed": seed}}
                store.commit_trial(completed_row(f"{cell}{int(bidir)}{seed}", final, config), eval_curve(final))
    store.commit_trial({"trial_id": "bad", "status": "failed", "error": "RuntimeError: <b>boom</b>",
                        "config": {"model": {"cell": "gru", "bidirectional": False}, "train": {"seed": 2}}})
    return build_report(job)[1]


def test_report_renders_in_chromium_without_errors_or_requests(tmp_path: Path) -> None:
    html = _job(tmp_path / "job")
    bad = tmp_path / "bad.html"  # the check itself must see what it is looking for
    bad.write_text('<!DOCTYPE html><html><body><img src="http://example.invalid/x.png">'
                   '<script>console.error("boom")</script></body></html>')
    assert CHROMIUM is not None
    with Chromium(CHROMIUM, width=1280) as browser:
        page = browser.load(html, screenshot=True)
        control = browser.load(bad)
    assert page.console_errors == [], page.console_errors
    assert page.requests == [page.url]  # the page itself, nothing else: no network, no data: URLs
    assert page.svg_count == 4  # validation curves, train/val panels, configuration CIs, parallel coordinates
    assert page.title == "job report"
    assert page.page_width <= 1280  # nothing forces a horizontal scroll bar
    assert page.screenshot is not None and page.screenshot.startswith(b"\x89PNG") and len(page.screenshot) > 50_000
    assert "boom" in " ".join(control.console_errors)
    assert "http://example.invalid/x.png" in control.requests
