"""The report in headless Chromium (Debian's `chromium`): no console errors, no network, every chart drawn.

A screenshot goes to $BNSWEEP_TEST_ARTIFACTS/report.png when that is set (to keep it), else under the test's
temporary folder: nothing is written into the checkout. Without Chromium the test skips, saying how to
install it (CI's `.ci/run` installs it; a test never installs software).
"""

import os
import shutil
from pathlib import Path

import pytest
from needs import unavailable

from analysis import figures

pytestmark = [pytest.mark.ray, pytest.mark.browser, pytest.mark.slow]  # the report comes from a real sweep

NAMES = ("chromium", "chromium-browser", "google-chrome")
# no network of its own: no updates, sync, field trials or QUIC; a fresh profile per run
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    "--metrics-recording-only",
    "--no-pings",
]


def chromium() -> str:
    found = next((p for p in map(shutil.which, NAMES) if p), None)
    if not found:
        unavailable("Chromium is not installed: apt-get install chromium (Debian), as .ci/run does")
    return found


def test_report_renders_in_chromium(measured_report, tmp_path):
    try:
        import playwright.sync_api as playwright
    except ImportError:
        unavailable("needs the dev extra: pip install -e '.[dev]' (playwright)")
    browser = chromium()
    folder, written = measured_report
    errors, requests = [], []
    with playwright.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=browser, headless=True, args=FLAGS, viewport={"width": 1400, "height": 900}
        )
        page = ctx.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto((folder / "report.html").as_uri())
        page.wait_for_function("document.body.dataset.chartsDrawn !== undefined", timeout=120_000)
        drawn = int(page.evaluate("document.body.dataset.chartsDrawn"))
        marks = page.evaluate("""[...document.querySelectorAll('div.chart')].map(d =>
            d.querySelectorAll('svg .mark-line path, svg .mark-area path, svg .mark-symbol path').length)""")
        report_errors = page.evaluate("window.reportErrors")
        artifacts = Path(os.environ.get("BNSWEEP_TEST_ARTIFACTS") or tmp_path / "artifacts")
        artifacts.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(artifacts / "report.png"), full_page=True)
        ctx.close()
    assert errors == [] and report_errors == []
    assert drawn == len(written[0].drawn) == len(figures.FIGURES)
    assert len(marks) == drawn and all(m > 0 for m in marks), marks  # every chart has drawn marks
    assert [u for u in requests if not u.startswith(("file:", "data:", "blob:", "about:"))] == []
    assert (artifacts / "report.png").stat().st_size > 10_000
