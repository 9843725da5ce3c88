"""The HTML report of one or more run folders: what was kept and dropped and why, and how methods compare.

``render(runs)`` returns one self-contained HTML document (inline CSS, a small inline script, inline SVG
charts; no external URL), ``render(runs, fragment=True)`` the same content as a ``<div>`` for a notebook
cell, and ``write_report(runs, out)`` writes the document atomically beside a ``<name>.manifest.json``
sidecar (the output-file rule of ``thresher.outputs.check_output_file``). ``thresher report`` calls it.
"""

from __future__ import annotations

import base64
import hashlib
from html import escape
from pathlib import Path

from thresher import __version__
from thresher.errors import ConfigError
from thresher.io import atomic_path, write_json
from thresher.manifest import base_manifest
from thresher.outputs import check_output_file
from thresher.reporting.assets import CSS, JS
from thresher.reporting.page import comparison_section, run_section
from thresher.reporting.runs import read_run


def render(runs, *, fragment: bool = False) -> str:
    """The report of the run folders ``runs`` (paths; one or more): a whole HTML document, or with
    ``fragment`` its content alone (a ``<div class="thr">`` with its own style and script). ConfigError
    when a folder is not a run or is incomplete."""
    paths = [runs] if isinstance(runs, (str, Path)) else list(runs)
    if not paths:
        raise ConfigError("The report needs at least one run folder.")
    views = [read_run(p) for p in paths]
    title = "thresher report: " + ", ".join(v.label for v in views)
    body = [f"<h1>{escape(title)}</h1>",
            f'<p class="muted">thresher {escape(__version__)}; {len(views)} run(s). Histograms: all rows in grey, '
            "kept rows in green, the selection's cut as a dashed red line.</p>"]
    body += [run_section(v) for v in views]
    if len(views) > 1:
        body.append(comparison_section(views))
    content = "".join(body)
    if fragment:
        return f'<div class="thr"><style>{CSS}</style>{content}<script>{JS}</script></div>'
    # The policy allows this page's own script (by its hash) and inline styles, and nothing else: no
    # fetch, no other script, no event-handler attribute, even if some text escaped the escaping.
    digest = base64.b64encode(hashlib.sha256(JS.encode("utf-8")).digest()).decode("ascii")
    policy = f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head>"
            f'<body><div class="thr">{content}<script>{JS}</script></div></body></html>\n')


def write_report(runs, out) -> Path:
    """Render the report of ``runs`` into the file ``out`` (.html), atomically, with the sidecar
    ``<out>.manifest.json`` naming the runs; returns ``out``. An existing ``out`` is replaced only when
    thresher wrote it (its sidecar exists)."""
    out = Path(out)
    paths = [runs] if isinstance(runs, (str, Path)) else list(runs)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out {str(out)!r}: the report is an HTML file; give a name ending in .html.")
    check_output_file(out, inputs=paths)
    html = render(paths)
    with atomic_path(out) as tmp:
        tmp.write_text(html, encoding="utf-8")
    write_json(out.with_name(out.name + ".manifest.json"),
               {**base_manifest(None), "report": {"runs": [str(Path(p).resolve()) for p in paths],
                                                  "bytes": len(html.encode("utf-8"))}})
    return out
