"""Run folders (issue 13): no stale or mixed outputs across reruns, one writer at a time, empty selections
warned about (an error with --strict). Cheap: the length scorer on a few records, in-process CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap


from thresher.cli import main


def _data(tmp_path, n=8):
    recs = [{"instruction": f"Say {i}", "input": "", "output": "ok " * (i + 1)} for i in range(n)]
    alpaca = tmp_path / "a.json"
    alpaca.write_text(json.dumps(recs))
    sharegpt = tmp_path / "b.jsonl"
    sharegpt.write_text("".join(json.dumps({"conversations": [{"from": "human", "value": r["instruction"]},
                                                              {"from": "gpt", "value": r["output"]}]}) + "\n"
                                for r in recs))
    return alpaca, sharegpt


def _run(data, out, *extra):
    return main(["-q", "run", "length", "--data", str(data), "--out", str(out), "--cache-dir",
                 str(out.parent / "cache"), *extra])


def test_rerun_with_another_format_leaves_only_the_new_selection(tmp_path):
    alpaca, sharegpt = _data(tmp_path)
    out = tmp_path / "run"
    assert _run(alpaca, out) == 0
    assert (out / "selected.json").exists() and (out / "length" / "selected.json").exists()
    assert _run(sharegpt, out) == 0
    assert not (out / "selected.json").exists() and not (out / "length" / "selected.json").exists()
    assert (out / "selected.jsonl").exists()
    assert json.loads((out / "manifest.json").read_text())["data"]["path"] == str(sharegpt)


def test_a_failed_rerun_never_leaves_the_old_manifest_beside_new_scores(tmp_path, capsys):
    alpaca, sharegpt = _data(tmp_path)
    out = tmp_path / "run"
    assert _run(alpaca, out) == 0
    # Fails after scoring (empty selection under --strict): new scores exist, the old results must not.
    assert _run(sharegpt, out, "--set", "stages.0.select.params.ratio=0.1", "--strict") == 2
    assert "kept 0 of 8 rows" in capsys.readouterr().err
    assert (out / "length" / "scores.parquet").exists()
    left = {p.name for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert left == {"scores.parquet", "run.log"}, left              # run.log: every start's log, appended
    assert _run(sharegpt, out) == 0 and (out / "manifest.json").exists()     # the rerun completes it


def test_temporary_files_of_a_killed_write_are_removed_by_the_next_run(tmp_path):
    """A run killed inside an atomic write leaves its .tmp file (here: a real process killed by SIGKILL inside
    atomic_path, at the top of the run folder and in a stage folder); the next run into the folder removes it."""
    alpaca, _ = _data(tmp_path)
    out = tmp_path / "run"
    assert _run(alpaca, out) == 0
    for target in (out / "summary.json", out / "length" / "scores.parquet"):
        code = ("import os, signal, sys\nfrom thresher.io import atomic_path\n"
                "with atomic_path(sys.argv[1]) as t:\n    t.write_text('half')\n    os.kill(os.getpid(), signal.SIGKILL)")
        assert subprocess.run([sys.executable, "-c", code, str(target)]).returncode == -signal.SIGKILL
    left = sorted(out.rglob(".*.tmp"))
    assert len(left) == 2, left
    assert _run(alpaca, out) == 0
    assert not list(out.rglob(".*.tmp"))


def test_renamed_stage_of_an_earlier_run_is_removed(tmp_path):
    alpaca, _ = _data(tmp_path)
    out = tmp_path / "run"
    assert _run(alpaca, out, "--set", "stages.0.name=old") == 0 and (out / "old").is_dir()
    assert _run(alpaca, out) == 0
    assert not (out / "old").exists() and (out / "length" / "scores.parquet").exists()


def test_empty_selection_warns_and_strict_makes_it_an_error(tmp_path, capsys):
    alpaca, _ = _data(tmp_path)
    out = tmp_path / "run"
    assert _run(alpaca, out, "--set", "stages.0.select.params.ratio=0.1") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["warnings"] == ["stage 'length': the selection (top_k) kept 0 of 8 rows"]
    assert "warning: stage 'length'" in capsys.readouterr().out
    assert _run(alpaca, tmp_path / "run2", "--set", "stages.0.select.params.ratio=0.1", "--strict") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("thresher: error:") and "--strict" in err[0]


def test_second_run_into_the_same_folder_is_refused_until_the_holder_dies(tmp_path, capsys):
    alpaca, _ = _data(tmp_path)
    out = tmp_path / "run"
    assert _run(alpaca, out) == 0
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from thresher.outputs import output_lock
        with output_lock({str(out)!r}):
            print("locked", flush=True)
            time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert _run(alpaca, out) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "is writing into" in err
        os.kill(holder.pid, signal.SIGKILL)             # a killed holder leaves no stale lock behind
        holder.wait()
        assert _run(alpaca, out) == 0
    finally:
        if holder.poll() is None:
            holder.kill()


def test_user_folder_input_and_cwd_are_refused_as_run_outputs(tmp_path, capsys, monkeypatch):
    alpaca, _ = _data(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert _run(alpaca, mine) == 2
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(os.listdir(mine)) == ["notes.txt"]
    assert _run(alpaca, tmp_path) == 2                  # holds the input (and is not thresher's)
    monkeypatch.chdir(tmp_path / "mine")
    assert main(["-q", "run", "length", "--data", str(alpaca), "--out", "."]) == 2
    errs = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("thresher: error:")]
    assert len(errs) == 3 and "did not write (notes.txt)" in errs[0] and "current directory" in errs[2]
    assert (tmp_path / "a.json").exists()


def test_select_that_keeps_nothing_warns_and_strict_fails(tmp_path, capsys):
    alpaca, _ = _data(tmp_path)
    out = tmp_path / "run"
    assert _run(alpaca, out) == 0
    capsys.readouterr()
    sel = tmp_path / "sel.jsonl"
    assert main(["select", str(out), "--top-ratio", "0.1", "--out", str(sel)]) == 0
    assert "warning: the selection (top_k on resp_tokens) kept 0 of 8 rows" in capsys.readouterr().out
    assert json.loads((tmp_path / "sel.jsonl.manifest.json").read_text())["warnings"]
    assert main(["select", str(out), "--top-ratio", "0.1", "--out", str(tmp_path / "s2.jsonl"), "--strict"]) == 2
    assert not (tmp_path / "s2.jsonl").exists()
