"""The report in a real browser (headless chromium, network off, driven over the DevTools protocol by
tests/browser.py): no console error, the charts and tables render, the planted markup runs nothing and is
shown as text, the search box filters, and the comparison of two runs shows the overlap table."""

from __future__ import annotations

import json
import os

import pytest

from browser import Browser, find_chromium
from test_report import PLANTED, make_runs
from thresher.reporting import write_report


@pytest.fixture(scope="module")
def browser():
    if find_chromium() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed; CI installs it with scripts/setup.sh")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    with Browser() as b:
        yield b


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report-browser")
    length, sf = make_runs(folder)
    return write_report([sf], folder / "run.html"), write_report([length, sf], folder / "compare.html")


def test_single_run_report_in_a_browser(browser, reports, tmp_path):
    browser.open(reports[0])
    assert browser.errors == []
    assert browser.eval("typeof window.__pwned") == "undefined"
    assert browser.eval("document.querySelectorAll('svg.hist rect').length") > 0
    assert browser.eval("document.querySelectorAll('svg.scatter circle').length") > 0
    n_rows = browser.eval("document.querySelectorAll('.examples tbody tr').length")
    assert n_rows > 0
    assert PLANTED in browser.eval("document.body.innerText")
    assert browser.eval("document.querySelectorAll('.examples img').length") == 0
    visible = ("(() => { const box = document.querySelector('input.thr-search'); box.value = %s;"
               " box.dispatchEvent(new Event('input'));"
               " return [...document.querySelectorAll('.examples tbody tr')].filter(r => !r.hidden).length; })()")
    assert browser.eval(visible % json.dumps("window.__pwned")) == 1
    assert browser.eval(visible % json.dumps("")) == n_rows
    clicked = ("(() => { const th = [...document.querySelectorAll('.examples th')].find(h => h.textContent === 'rank');"
               " th.click(); th.click();"
               " return [...document.querySelectorAll('.examples tbody tr')].map(r => +r.cells[1].dataset.v); })()")
    ranks = browser.eval(clicked)
    assert ranks == sorted(ranks, reverse=True)
    png = browser.screenshot(tmp_path / "run.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert browser.errors == []


def test_comparison_report_in_a_browser(browser, reports, tmp_path):
    browser.open(reports[1])
    assert browser.errors == []
    assert browser.eval("typeof window.__pwned") == "undefined"
    cells = browser.eval("[...document.querySelectorAll('table.overlap tbody td')].map(td => td.textContent)")
    assert len(cells) == 4 and cells[0] == "1" and cells[3] == "1"
    assert browser.eval("document.querySelectorAll('table.spearman tbody tr').length") == 2
    assert browser.eval("document.querySelectorAll('table.disagree tbody tr').length") > 0
    assert browser.screenshot(tmp_path / "compare.png", full_page=True).stat().st_size > 0
