"""The printed summary of a run and the numbers it is made of: score quantiles, NaN reasons, failed rows."""

from __future__ import annotations

import numpy as np
import pandas as pd


def failure_summary(summaries: list[dict], max_ratio: float) -> dict:
    """Rows (per scorer) whose result is not final, over every stage of ``summaries``; ``exceeded`` when
    their share of all scored rows is above ``max_ratio`` (the CLI then exits with status 2)."""
    parts = [st["failed"] for s in summaries for st in s.get("stages", []) if "failed" in st]
    rows, of = sum(p["rows"] for p in parts), sum(p["of"] for p in parts)
    ratio = rows / of if of else 0.0
    return {"rows": rows, "of": of, "ratio": round(ratio, 6), "max_ratio": max_ratio, "exceeded": ratio > max_ratio,
            "resume": RESUME if rows else None}


RESUME = ("rerun the same command to resume: answered judge requests are cached, so only the failed rows are "
          "asked again")


def failure_line(failed: dict) -> str:
    """One sentence on failed rows for the printed summary and the CLI's error line."""
    over = (f", more than max_failed_ratio {failed['max_ratio']:g} allows (exit status 2)"
            if failed["exceeded"] else f", within max_failed_ratio {failed['max_ratio']:g}")
    return (f"failed: {failed['rows']} of {failed['of']} scored rows ({failed['ratio']:.1%}) got no judge answer "
            f"after retries{over}; {RESUME}.")


def describe_scores(scores: pd.DataFrame, info: list[dict]) -> dict:
    """Quantiles of each scorer's main column, NaN count and reasons."""
    out = {"columns": {}}
    for rec in info:
        col = rec["main_column"]
        if col not in scores.columns or not pd.api.types.is_numeric_dtype(scores[col]):
            continue                       # embeddings, tags, label sets: not a score to summarise
        v = scores[col].to_numpy(dtype=np.float64)
        finite = v[np.isfinite(v)]
        q = dict(zip(["min", "p05", "p25", "p50", "p75", "p95", "max"],
                     np.quantile(finite, [0, .05, .25, .5, .75, .95, 1]).round(4).tolist())) if finite.size else {}
        entry = {"scored": int(finite.size), "nan": int(v.size - finite.size), "quantiles": q}
        if "status" in scores.columns:
            bad = scores.loc[scores["status"] != "ok", "status"].value_counts()
            entry["nan_reasons"] = {str(k): int(n) for k, n in bad.items()}
        out["columns"][col] = entry
    return out


def format_summary(summary: dict) -> str:
    """Human-readable summary printed by the CLI."""
    if "clients" in summary and "load" not in summary:
        return _format_clients(summary)
    lines = [f"thresher: {summary.get('recipe') or 'score'} on {summary['rows']} rows "
             f"from {summary['load']['path']} ({summary['load']['fmt']}, {summary['load']['container']})"]
    if summary.get("guard"):
        lines += format_guard(summary["guard"])
    lines += _format_stages(summary)
    if summary.get("global_threshold"):
        lines += _format_threshold(summary["global_threshold"])
    return "\n".join(lines + _closing_lines(summary))


def _closing_lines(summary: dict) -> list[str]:
    """The end of a printed summary: collaborative training, warnings, failed rows, where the outputs are."""
    lines = _format_collaborate(summary["collaborate"]) if summary.get("collaborate") else []
    lines += [f"warning: {w}" for w in summary.get("warnings", [])]
    if (summary.get("failed") or {}).get("rows"):
        lines.append(failure_line(summary["failed"]))
    lines.append(f"outputs: {summary['outputs']['dir']}  ({summary.get('seconds', 0)} s)")
    return lines


def _format_stages(summary: dict) -> list[str]:
    lines = []
    load = summary["load"]
    if load.get("truncated"):
        lines.append(f"  input: {load['truncated']}")
    if load.get("skipped"):
        lines.append("  skipped at load: " + ", ".join(f"{k}: {v}" for k, v in load["skipped"].items()))
    for st in summary["stages"]:
        lines.append(f"stage {st['name']} (model {st['model']})")
        if "train" in st:
            t = st["train"]
            loss = f"{t['loss']:.4f}" if t.get("loss") is not None else "n/a"
            lines.append(f"  trained on {t['trained']} of {t['rows']} rows ({t['skipped']} skipped), step "
                         f"{t['steps']}/{t['max_steps']}, loss {loss}, {len(t['checkpoints'])} checkpoint(s) -> "
                         f"{t.get('merged') or t['final']}")
        for col, e in st["columns"].items():
            q = e["quantiles"]
            qs = "  ".join(f"{k} {v:.4g}" for k, v in q.items()) if q else "no finite scores"
            lines.append(f"  {col}: {e['scored']} scored, {e['nan']} NaN  |  {qs}")
            if e.get("nan_reasons"):
                lines.append("    NaN reasons: " + ", ".join(f"{k}: {v}" for k, v in e["nan_reasons"].items()))
        if st.get("judge"):
            j = st["judge"]
            lines.append(f"  judge: {j.get('requests', 0)} requests ({j.get('cached', 0)} from cache), "
                         f"{j.get('calls', 0)} calls, {j.get('retries', 0)} retries, {j.get('failed', 0)} failed, "
                         f"{j.get('prompt_tokens', 0)}+{j.get('completion_tokens', 0)} tokens, "
                         f"cost {j.get('cost', 0.0):.4f}")
        if st.get("compute"):
            lines.append("  " + compute_line(st["compute"]))
        elif "seconds" in st:
            lines.append(f"  time: {st['seconds']:.1f} s")
        if "selected" in st:
            lines.append(f"  selected {st['selected']} kept / {st['dropped']} dropped -> {st['selected_file']}")
        if st.get("metrics"):
            m = st["metrics"]
            lines.append(f"  against labels: precision {m['precision']:.3f} recall {m['recall']:.3f} f1 {m['f1']:.3f}")
        if st.get("note"):
            lines.append(f"  note: {st['note']}")
    return lines


def format_guard(g: dict) -> list[str]:
    """The noise guard's lines (summary["guard"], thresher.pipeline.guard): flagged rows, then per kind the
    count and example ids, the kinds not judged and why."""
    dropped = ", left out of every selection" if "dropped" in g else ""
    lines = [f"guard: {g['flagged']} of {g['rows']} rows flagged{dropped} -> {g.get('flagged_file', 'flagged.jsonl')}"]
    for kind, n in g["by_kind"].items():
        lines.append(f"  {kind}: {n} row(s), e.g. {', '.join(g['examples'].get(kind, []))}")
    for kind, why in g.get("not_judged", {}).items():
        lines.append(f"  not judged: {kind} ({why})")
    for kind, missing in g.get("partial", {}).items():
        lines.append(f"  judged without: {kind} ({'; '.join(missing)})")
    if g.get("compute"):
        lines.append("  " + compute_line(g["compute"]))
    return lines


def compute_line(c: dict) -> str:
    """One line of a scoring stage's compute ledger."""
    return (f"compute: {c['seconds']:.1f} s, {c['computed_rows']} rows computed, {c['cached_rows']} from cache, "
            f"{c['model_passes']} model passes, {c['tokens']} tokens")


def _format_threshold(gt: dict) -> list[str]:
    q = "  ".join(f"{k} {v:.4g}" for k, v in gt["anchor"].items())
    lines = [f"global threshold ({gt['rule']}{'' if gt.get('q') is None else ' q=' + str(gt['q'])} of the anchor "
             f"scores): tau = {gt['tau']:.6g}   anchor scores: {q}"]
    for name, c in gt["clients"].items():
        extra = f", precision {c['precision']:.3f} recall {c['recall']:.3f} f1 {c['f1']:.3f}" if "f1" in c else ""
        lines.append(f"  {name}: kept {c['selected']} of {c['rows']}{extra}")
    if gt.get("overall"):
        o = gt["overall"]
        lines.append(f"  overall: precision {o['precision']:.3f} recall {o['recall']:.3f} f1 {o['f1']:.3f}")
    return lines


def _format_clients(summary: dict) -> str:
    lines = [f"thresher: {summary['recipe']} over {len(summary['clients'])} clients, {summary['rows']} rows"]
    for name, c in summary["clients"].items():
        lines.append(f"client {name}: {c['rows']} rows from {c['load']['path']}")
        lines += ["  " + x for x in _format_stages(c)]
    lines += _format_threshold(summary["global_threshold"])
    return "\n".join(lines + _closing_lines(summary))


def _format_collaborate(c: dict) -> list[str]:
    m = c["merge"]
    lines = ["collaborative training on the kept rows:"]
    for name, t in c["clients"].items():
        if "note" in t:
            lines.append(f"  {name}: {t['note']}")
        else:
            loss = f"{t['loss']:.4f}" if t.get("loss") is not None else "n/a"
            lines.append(f"  {name}: trained on {t['trained']} rows, {t['steps']} steps, loss {loss} -> {t['final']}")
    if c.get("merged"):
        density = f", density {m['density']}" if m["method"] == "ties" else ""
        lines.append(f"  merged ({m['method']}{density}): adapter {c['merged']}"
                     + (f", model {c['model']}" if c.get("model") else ""))
    else:
        lines.append(f"  {m.get('note', 'not merged')}")
    return lines
