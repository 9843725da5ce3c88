"""The report screenshots in docs/: one run (docs/report-run.png) and the comparison of two
(docs/report-compare.png), 1200x900 viewports taken by headless chromium through tests/browser.py.

    python scripts/report_screenshots.py                     # runs `length` and `superfiltering` first
    python scripts/report_screenshots.py RUN_A RUN_B         # existing run folders (the first is shown alone)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

from browser import Browser  # noqa: E402
from thresher.reporting import write_report  # noqa: E402

# Where each screenshot starts: the first stage's heading, and the comparison section.
SCROLL = {"run": "document.querySelector('section.run h4:nth-of-type(2)')",
          "compare": "document.querySelector('section.compare')"}


def shoot(browser: Browser, report: Path, target: str, out: Path) -> Path:
    browser.open(report)
    if browser.errors:
        raise RuntimeError(f"{report}: {browser.errors}")
    browser.eval(f"{target}.scrollIntoView()")
    return browser.screenshot(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", help="two run folders (default: run the length and superfiltering recipes)")
    ap.add_argument("--docs", default=str(REPO / "docs"), help="where the PNGs go")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="thresher-screenshots-") as tmp:
        work = Path(tmp)
        if args.runs:
            runs = [Path(r) for r in args.runs]
        else:
            from test_report import make_runs
            runs = list(make_runs(work))
        docs = Path(args.docs)
        docs.mkdir(parents=True, exist_ok=True)
        single = write_report([runs[-1]], work / "run.html")
        compare = write_report(runs, work / "compare.html")
        with Browser(width=1200, height=900) as b:
            for path in (shoot(b, single, SCROLL["run"], docs / "report-run.png"),
                         shoot(b, compare, SCROLL["compare"], docs / "report-compare.png")):
                print(f"{path} ({path.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
