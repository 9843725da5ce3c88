"""The report page: one run's sections (dataset, per stage: the selection rule, counts, cost, NaN reasons,
histograms, score against length, examples) and, for two or more runs, their comparison.

Every string that comes from a file (dataset text, ids, column names, paths, recipe values) goes through
``esc`` (``html.escape`` with ``quote=True``) before it reaches the page; no file content is put into a
script. Large runs stay small on the page: histograms are computed from the full columns, while the
scatter shows at most ``SCATTER_POINTS`` seeded sampled rows and the example tables a fixed number of rows,
and only those rows' records are read from the data.
"""

from __future__ import annotations

import json
from html import escape

import numpy as np
import pandas as pd

from thresher.reporting import stats
from thresher.reporting.runs import Part, RunView, StageView, score_columns, status_columns
from thresher.reporting.svg import fmt, histogram_svg, scatter_svg

SCATTER_POINTS = 2000
EXAMPLES_PER_GROUP = 8
DISAGREEMENTS = 20
PREVIEW_CHARS = 160                    # text shown before the expander
FULL_CHARS = 6000                      # text shown inside it (the rest is counted, not shown)


def esc(value) -> str:
    """Text for HTML content or a quoted attribute value."""
    return escape(str(value), quote=True)


def num(x) -> str:
    """A number cell: right-aligned, sortable by its value."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return f"<td>{esc(x)}</td>"
    return f'<td class="n" data-v="{v!r}">{esc(fmt(v))}</td>' if np.isfinite(v) else '<td class="n">NaN</td>'


def text_cell(text: str) -> str:
    """A long text cell: the first PREVIEW_CHARS characters, the rest behind an expander."""
    text = str(text)
    if len(text) <= PREVIEW_CHARS:
        return f'<td class="t">{esc(text)}</td>'
    shown = text[:FULL_CHARS]
    more = f"\n[... {len(text) - FULL_CHARS} more characters]" if len(text) > FULL_CHARS else ""
    return (f'<td class="t"><details><summary>{esc(text[:PREVIEW_CHARS])}… ({len(text)} characters)</summary>'
            f"{esc(shown[PREVIEW_CHARS:])}{esc(more)}</details></td>")


def kv_table(items) -> str:
    """A two-column table of (name, value) pairs; values escaped."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in items)
    return f'<table class="kv">{rows}</table>'


def _head_cells(names) -> str:
    return "".join(f"<th>{esc(h)}</th>" for h in names)


def searchable_table(head: str, body: list[str], *, heading: str = "", div_class: str = "examples",
                     table_class: str = "sortable") -> str:
    """A table of example rows with the search box and row count the inline script works on (``head``: the
    header cells' HTML; ``body``: one ``<tr>`` per row; ``heading``: HTML put above the search box)."""
    return (f'<div class="{div_class}">{heading}<input class="thr-search" type="search" '
            f'placeholder="search these rows"> <span class="thr-count muted">{len(body)} rows</span>'
            f'<table class="{table_class}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>')


def _params(params: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in (params or {}).items()) or "none"


# ------------------------------------------------------------------------------------------ one run
def run_section(run: RunView) -> str:
    m, s = run.manifest, run.summary
    recipe = m.get("recipe") or {}
    head = [("folder", str(run.path)), ("recipe", s.get("recipe") or recipe.get("name") or "-"),
            ("created", m.get("created", "-")), ("command", " ".join(map(str, m.get("argv") or [])) or "-"),
            ("thresher", (m.get("versions") or {}).get("thresher", "-")),
            ("whole run", f"{s['seconds']} s" if "seconds" in s else "not recorded")]
    out = [f'<section class="run"><h2>Run {esc(run.label)}</h2>', kv_table(head)]
    out += [f'<p class="note">warning: {esc(w)}</p>' for w in s.get("warnings", [])]
    if s.get("global_threshold"):
        gt = s["global_threshold"]
        out.append(f"<p>Global threshold over the clients' anchor scores: rule {esc(gt.get('rule'))}"
                   f"{'' if gt.get('q') is None else ' q=' + esc(gt['q'])}, tau = {esc(fmt(gt.get('tau')))}.</p>")
    for part in run.parts:
        out.append(part_section(part))
    return "".join(out) + "</section>"


def part_section(part: Part) -> str:
    out = [f"<h3>Client {esc(part.label)}</h3>" if part.label else "", "<h4>Dataset</h4>", dataset_table(part),
           compute_ledger(part), guard_section(part)]
    for st in part.stages:
        out.append(train_section(st) if st.is_train else stage_section(part, st))
    return "".join(out)


def compute_ledger(part: Part) -> str:
    """The compute ledger: per stage its kind (scoring / training), seconds, model passes, tokens and rows
    computed and from cache (summary "compute"; a training stage's "seconds"), with the scoring total beside
    the training total, so that the selection's cost reads against the training it saves."""
    head = ("stage", "kind", "seconds", "model passes", "tokens", "rows computed", "rows from cache")
    rows, totals = [], {"scoring": 0.0, "training": 0.0}
    for st in part.stages:
        kind = "training" if st.is_train else "scoring"
        c = st.summary.get("compute") or {}
        secs = st.summary.get("seconds") if st.is_train else c.get("seconds")
        if secs is not None:
            totals[kind] += float(secs)
        rows.append((st.name, kind, fmt(secs) if secs is not None else "not recorded",
                     *(fmt(c[k]) if k in c else "-" for k in ("model_passes", "tokens", "computed_rows",
                                                              "cached_rows"))))
    if not rows:
        return ""
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>" for r in rows)
    total = f"scoring {fmt(totals['scoring'])} s" + (f", training {fmt(totals['training'])} s"
                                                      if any(st.is_train for st in part.stages) else "")
    return (f'<h4>Compute ledger</h4><table class="ledger"><tr>{"".join(f"<th>{esc(h)}</th>" for h in head)}</tr>'
            f"{body}</table><p>Total: {esc(total)}.</p>")


def guard_section(part: Part) -> str:
    """The noise guard's verdict (summary "guard", thresher.pipeline.guard): rows flagged per kind, the kinds
    not judged, whether flagged rows were dropped from the selections (``--guard``), and the most suspect
    examples of each kind with the reason and the text (from guard/scores.parquet), searchable and sortable."""
    g = part.summary.get("guard")
    if not g:
        return ""
    items = [("rows judged", g.get("rows", "-")), ("flagged", g.get("flagged", "-")),
             ("by kind", ", ".join(f"{k}: {n}" for k, n in (g.get("by_kind") or {}).items()) or "none"),
             ("not judged", ", ".join(f"{k} ({why})" for k, why in (g.get("not_judged") or {}).items()) or "none")]
    if "dropped" in g:
        items.append(("left out of the selections", g["dropped"]))
    out = ["<h4>Noise guard</h4>", kv_table(items)]
    verdict_file = part.folder / "guard" / "scores.parquet"
    shown = [(kind, i) for kind, ids in (g.get("examples") or {}).items() for i in ids]
    if not shown or not verdict_file.is_file():
        return "".join(out)
    verdict = pd.read_parquet(verdict_file, columns=["id", "reason", "suspect"])
    pos = {i: n for n, i in enumerate(verdict["id"].astype(str))}
    shown = [(kind, i, pos[i]) for kind, i in shown if i in pos]
    texts = part.texts([r for _, _, r in shown])
    body = [f"<tr><td>{esc(kind)}</td><td>{esc(i)}</td>{num(verdict['suspect'].iat[r])}"
            f"<td>{esc(verdict['reason'].iat[r])}</td>{text_cell(ins)}{text_cell(resp)}</tr>"
            for (kind, i, r), (ins, resp) in zip(shown, texts)]
    head = _head_cells(("kind", "id", "suspect", "reason", "instruction", "response"))
    out.append(searchable_table(head, body, heading="<h4>Most suspect rows per kind</h4>",
                                div_class="examples guard"))
    return "".join(out)


def dataset_table(part: Part) -> str:
    d, load = part.data, part.summary.get("load") or (part.data.get("report") or {})
    skipped = load.get("skipped") or {}
    items = [("path", d.get("path", "-")), ("format", f"{load.get('fmt', d.get('format', '-'))}, "
                                                    f"{load.get('container', '-')}"),
             ("records read", load.get("n_read", "-")), ("rows loaded", part.summary.get("rows", d.get("rows", "-"))),
             ("skipped", ", ".join(f"{k}: {v}" for k, v in skipped.items()) or "none")]
    if d.get("limit") is not None:
        items.append(("limit", d["limit"]))
    if load.get("truncated"):
        items.append(("cut off", load["truncated"]))
    html = kv_table(items)
    if part.data_error:
        html += (f'<p class="note">The records cannot be read now, so texts and lengths are not shown: '
                 f"{esc(part.data_error)}</p>")
    return html


def train_section(st: StageView) -> str:
    t = st.summary.get("train") or {}
    items = [(k, t[k]) for k in ("rows", "trained", "skipped", "steps", "max_steps", "loss", "final", "merged")
             if k in t]
    secs = st.summary.get("seconds")
    items.append(("seconds", f"{secs}" if secs is not None else "not recorded"))
    return f"<h4>Stage {esc(st.name)}: training (model {esc(st.record.get('model', '-'))})</h4>" + kv_table(items)


def stage_section(part: Part, st: StageView) -> str:
    scores = st.scores
    kept = st.kept_mask()
    out = [f"<h4>Stage {esc(st.name)} (model {esc(st.record.get('model', '-'))})</h4>",
           f"<p>{esc(selection_words(st))}</p>"]
    if st.selected is not None:
        out.append(f"<p><b>{len(st.selected)}</b> kept, <b>{len(scores) - len(st.selected)}</b> dropped "
                   f"of {len(scores)} rows ({len(st.selected) / max(len(scores), 1):.1%} kept).</p>")
    out += [ledger_table(st), nan_table(scores)]
    figures = histograms(scores, kept, st) + scatter(part, st, kept)
    if figures:
        out.append(_legend(kept) + f'<div class="charts">{"".join(figures)}</div>')
    out.append(examples(part, st, kept))
    return "".join(out)


def selection_words(st: StageView) -> str:
    """The stage's selection rule in one sentence."""
    sel = st.record.get("select")
    if not sel:
        return "This stage scores and does not select."
    params = dict(sel.get("params") or {})
    where = params.pop("where", None) or {}
    hib = st.higher_is_better
    way = {True: "higher is better", False: "lower is better", None: "no direction"}[hib]
    ranked = f"ranks {st.ranked} ({way})" if st.ranked else "ranks no score column"
    ops = {"lt": "<", "le": "<=", "gt": ">", "ge": ">="}
    cond = "; candidates: " + " and ".join(f"{c} {ops.get(o, o)} {fmt(v)}" for c, w in where.items()
                                          for o, v in w.items()) if where else ""
    return f"Selection: {sel['selector']} {ranked}; parameters: {_params(params)}{cond}."


def ledger_table(st: StageView) -> str:
    """Time and model work of the stage (summary "compute", contract 2), the score cache and the judge."""
    c = st.summary.get("compute")
    rows = [("compute", ", ".join(f"{k.replace('_', ' ')} {fmt(v)}" for k, v in c.items()) if c else "not recorded")]
    for sc in st.record.get("scorers") or []:
        cache = sc.get("cache") or {}
        rows.append((f"scorer {sc['scorer']} (v{sc.get('version', '?')})",
                     f"{_params(sc.get('params'))}; rows computed {cache.get('computed', '-')}, "
                     f"from cache {cache.get('cached', '-')}, failed {cache.get('failed', 0)}"))
    j = st.summary.get("judge")
    if j:
        rows.append(("judge", f"{j.get('requests', 0)} requests ({j.get('cached', 0)} cached), {j.get('calls', 0)} "
                              f"calls, {j.get('retries', 0)} retries, {j.get('failed', 0)} failed, "
                              f"{j.get('prompt_tokens', 0)}+{j.get('completion_tokens', 0)} tokens, "
                              f"cost {j.get('cost', 0.0):.4f}"))
    return kv_table(rows)


def nan_table(scores: pd.DataFrame) -> str:
    """Rows without a score, counted by the scorer's reason (its ``status`` column)."""
    cols = status_columns(scores)
    if not cols:
        return ""
    parts = []
    for col in cols:
        counts = scores.loc[scores[col] != "ok", col].value_counts()
        body = "".join(f"<tr><td>{esc(k)}</td>{num(v)}</tr>" for k, v in counts.items()) or \
            '<tr><td colspan="2">none: every row scored</td></tr>'
        parts.append(f"<table><thead><tr><th>{esc(col)}: reason for NaN</th><th>rows</th></tr></thead>"
                     f"<tbody>{body}</tbody></table>")
    return "".join(parts)


def _legend(kept) -> str:
    return ('<p class="legend muted"><span style="background:#b9c6d3"></span>all rows'
            '<span style="background:#2e7d32"></span>kept<span style="background:#c62828"></span>cut</p>'
            if kept is not None else "")


def histograms(scores: pd.DataFrame, kept, st: StageView) -> list[str]:
    """One histogram per numeric score column, from the full column; the ranked column gets the cut line."""
    out = []
    for col in sorted(score_columns(scores), key=lambda c: c != st.ranked):     # the ranked column first
        v = scores[col].to_numpy(dtype=np.float64, na_value=np.nan)
        h = stats.histogram(v, kept)
        cut = stats.cut_value(v, kept, st.higher_is_better) if col == st.ranked else None
        caption = f"{col}: {h.finite} finite, {h.nan} NaN" + (f"; cut {fmt(cut)}" if cut is not None else "")
        out.append(f'<figure class="chart">{histogram_svg(h, col, cut, caption)}'
                   f"<figcaption>{esc(caption)}</figcaption></figure>")
    return out


def scatter(part: Part, st: StageView, kept) -> list[str]:
    """Main score against response length for at most SCATTER_POINTS seeded sampled rows ([] without a
    ranked column or readable data)."""
    col = st.ranked or st.main
    if col is None or col not in st.scores.columns or part.dataset() is None:
        return []
    rows = stats.sample_rows(len(st.scores), SCATTER_POINTS)
    length = np.array([len(resp) for _, resp in part.texts(rows)], dtype=np.float64)
    y = st.scores[col].to_numpy(dtype=np.float64, na_value=np.nan)[rows]
    title = f"{col} against response length ({len(rows)} of {len(st.scores)} rows)"
    return [f'<figure class="chart">{scatter_svg(length, y, kept[rows] if kept is not None else None, col, title)}'
            f"<figcaption>{esc(title)}</figcaption></figure>"]


def examples(part: Part, st: StageView, kept) -> str:
    """Top, bottom, boundary and sampled rows of the ranked column with their text; searchable, sortable."""
    col = st.ranked or st.main
    if col is None or col not in st.scores.columns:
        return ""
    v = st.scores[col].to_numpy(dtype=np.float64, na_value=np.nan)
    hib = st.higher_is_better
    groups = stats.example_rows(v, kept, hib, EXAMPLES_PER_GROUP)
    rank = np.empty(len(v), dtype=np.int64)
    rank[stats.order(v, hib)] = np.arange(1, len(v) + 1)
    rows = np.concatenate(list(groups.values()))
    names = np.concatenate([[g] * len(r) for g, r in groups.items()])
    texts = part.texts(rows)
    status = status_columns(st.scores)
    head = ["group", "rank", "id", "kept", col, *status, "response chars", "instruction", "response"]
    body = []
    for g, i, (ins, resp) in zip(names, rows.tolist(), texts):
        k = bool(kept[i]) if kept is not None else None
        cells = [f"<td>{esc(g)}</td>", num(rank[i]), f"<td>{esc(st.scores['id'].iat[i])}</td>",
                 f"<td>{'yes' if k else 'no' if k is not None else '-'}</td>", num(v[i]),
                 *(f"<td>{esc(st.scores[c].iat[i])}</td>" for c in status), num(len(resp)),
                 text_cell(ins), text_cell(resp)]
        body.append(f'<tr class="{"kept" if k else ""}">{"".join(cells)}</tr>')
    return searchable_table(_head_cells(head), body, heading=f"<h4>Examples by {esc(col)} (rank 1 = best)</h4>")


# ------------------------------------------------------------------------------------------ comparison
def compared_stages(run: RunView) -> list[tuple[Part, StageView]]:
    """The stage a run is compared by, with its part, for each part that has one: the last scoring stage
    that selects, else the last scoring stage."""
    out = []
    for part in run.parts:
        scoring = [st for st in part.stages if not st.is_train]
        picked = [st for st in scoring if st.selected is not None] or scoring
        if picked:
            out.append((part, picked[-1]))
    return out


def comparison_inputs(runs: list[RunView]) -> list[dict]:
    """Per run: label, ids (N,), ranked values (N,) or None, direction, kept ids, column, stage name."""
    labels = _unique([r.label for r in runs])
    out = []
    for label, run in zip(labels, runs):
        stages = [st for _, st in compared_stages(run)]
        col = stages[0].ranked or stages[0].main if stages else None
        has = bool(stages) and col is not None and all(col in st.scores.columns for st in stages)
        out.append({"label": label, "stage": stages[0].name if stages else "-", "column": col if has else None,
                    "ids": np.concatenate([st.scores["id"].to_numpy(dtype=object) for st in stages]) if stages
                    else np.zeros(0, object),
                    "values": np.concatenate([st.scores[col].to_numpy(dtype=np.float64, na_value=np.nan)
                                              for st in stages]) if has else None,
                    "higher_is_better": stages[0].higher_is_better if stages else None,
                    "kept": {i for st in stages for i in (st.selected or [])}})
    return out


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab} ({seen[lab]})")
    return out


def spearman_matrix(inputs: list[dict]) -> list[list[tuple[float | None, int]]]:
    """(rho, pairs) of every two runs' ranked columns, joined on id."""
    out = []
    for a in inputs:
        row = []
        for b in inputs:
            if a["values"] is None or b["values"] is None:
                row.append((None, 0))
                continue
            common = pd.Index(a["ids"]).intersection(pd.Index(b["ids"]), sort=False)
            va = a["values"][pd.Index(a["ids"]).get_indexer(common)]
            vb = b["values"][pd.Index(b["ids"]).get_indexer(common)]
            row.append(stats.spearman(va, vb))
        out.append(row)
    return out


def comparison_section(runs: list[RunView]) -> str:
    inputs = comparison_inputs(runs)
    labels = [r["label"] for r in inputs]
    head = "".join(f"<th>{esc(lab)}</th>" for lab in labels)
    summary = "".join(
        f"<tr><td>{esc(r['label'])}</td><td>{esc(r['stage'])}</td><td>{esc(r['column'] or '-')}</td>"
        f"<td>{esc({True: 'higher', False: 'lower', None: '-'}[r['higher_is_better']])}</td>{num(len(r['ids']))}"
        f"{num(len(r['kept']))}</tr>" for r in inputs)
    rho = spearman_matrix(inputs)
    rho_rows = "".join(f"<tr><th>{esc(lab)}</th>" + "".join(
        f'<td class="n" data-v="{x!r}" title="{n} rows with both scores">{x:.3f}</td>' if x is not None
        else '<td class="n">n/a</td>' for x, n in row) + "</tr>" for lab, row in zip(labels, rho))
    jac_rows = "".join(f"<tr><th>{esc(a['label'])}</th>" + "".join(
        num(j) if (j := stats.jaccard(a["kept"], b["kept"])) is not None else '<td class="n">n/a</td>'
        for b in inputs) + "</tr>" for a in inputs)
    return ('<section class="compare"><h2>Comparison</h2>'
            "<table><thead><tr><th>run</th><th>stage</th><th>ranked column</th><th>better</th><th>rows</th>"
            f"<th>kept</th></tr></thead><tbody>{summary}</tbody></table>"
            "<h4>Spearman correlation of the ranked columns (rows joined on id, both finite)</h4>"
            f'<table class="grid spearman"><thead><tr><th></th>{head}</tr></thead><tbody>{rho_rows}</tbody></table>'
            "<h4>Overlap of the kept ids (Jaccard: shared / either)</h4>"
            f'<table class="grid overlap"><thead><tr><th></th>{head}</tr></thead><tbody>{jac_rows}</tbody></table>'
            + disagreement_table(runs, inputs) + "</section>")


def disagreement_table(runs: list[RunView], inputs: list[dict]) -> str:
    """Rows kept by some runs and dropped by others, the largest rank spread first, with the first run's text."""
    table = stats.disagreements(inputs, DISAGREEMENTS)
    title = ("<h4>Where the methods disagree most (kept by some, dropped by others; spread: difference of rank "
             "percentiles, 0 = best)</h4>")
    if table.empty:
        return title + "<p>No row is kept by one run and dropped by another.</p>"
    texts = texts_by_id(runs[0], table["id"].tolist())
    cols = [c for c in table.columns if c != "id"]
    head = "".join(f"<th>{'<br>'.join(map(esc, h.rsplit(':', 1)))}</th>"       # "run:kept" in two lines
                   for h in ["id", *cols, "instruction", "response"])
    body = []
    for i, row in enumerate(table.itertuples(index=False)):
        cells = [f"<td>{esc(row[0])}</td>"]
        for c, val in zip(cols, row[1:]):
            cells.append(f"<td>{'yes' if val else 'no'}</td>" if c.endswith(":kept") else num(val))
        ins, resp = texts.get(row[0], ("", ""))
        body.append("<tr>" + "".join(cells) + text_cell(ins) + text_cell(resp) + "</tr>")
    return title + searchable_table(head, body, table_class="sortable disagree")


def texts_by_id(run: RunView, ids: list[str]) -> dict[str, tuple[str, str]]:
    """(instruction, response) of ``ids`` from the data of ``run`` (ids it does not hold are left out)."""
    out: dict[str, tuple[str, str]] = {}
    for part, st in compared_stages(run):
        pos = pd.Index(st.scores["id"]).get_indexer(ids)
        found = [(i, p) for i, p in zip(ids, pos) if p >= 0 and i not in out]
        if found and part.dataset() is not None:
            out.update(zip([i for i, _ in found], part.texts([p for _, p in found])))
    return out
