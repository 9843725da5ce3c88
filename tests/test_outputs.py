"""Nothing lost, nothing leaked (issue 13): output ownership of every command that writes a folder or a
file (merge, train, eval, select), recipe stage names that stay inside --out, and `thresher select`
finding its data from any directory."""

from __future__ import annotations

import json

import pytest

from thresher import cli
from thresher.pipeline.config import NAME_PATTERN, is_safe_name, safe_name


def _main(capsys, *argv):
    """cli.main's exit status and its stderr lines."""
    rc = cli.main([str(a) for a in argv])
    return rc, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------ stage names (item 5)
def _recipe(path, stage_name):
    stage = {"name": stage_name, "score": [{"scorer": "length"}],
             "select": {"selector": "top_k", "params": {"k": 2}}}
    path.write_text(json.dumps({"name": "t", "stages": [stage]}), encoding="utf-8")   # JSON is YAML
    return path


@pytest.mark.parametrize("name", ["../x", "/abs", "../../etc/x", "a/b", "..", "x..y", ".hidden", ""])
def test_validate_refuses_stage_names_that_are_paths(tmp_path, capsys, name):
    recipe = {"name": "t", "stages": [{"name": "ok", "score": [{"scorer": "length"}]},
                                       {"name": name, "score": [{"scorer": "length"}],
                                        "select": {"selector": "top_k", "params": {"k": 2}}}]}
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(recipe), encoding="utf-8")
    rc, err = _main(capsys, "validate", path)
    if name == "":                      # an empty name is the default "stage1": valid
        assert rc == 0, err
        return
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("thresher: error:"), err
    assert "stage 1" in err[0] and repr(name) in err[0] and NAME_PATTERN in err[0]


def test_validate_accepts_plain_stage_names(tmp_path, capsys):
    rc, err = _main(capsys, "validate", _recipe(tmp_path / "r.yaml", "score-1.v2_x"))
    assert rc == 0, err


def test_safe_name_gives_folder_names_validate_accepts():
    cases = {"a b": "a_b", "../x": "x", "/abs/p": "abs_p", ".hidden": "hidden", "a..b": "a.b",
             "..": "client", "ü": "client", "client-1.json": "client-1.json"}
    for text, want in cases.items():
        assert safe_name(text) == want, text
    assert safe_name("", default="data") == "data"
    long = safe_name("x" * 300)
    assert len(long) == 64 and is_safe_name(long)
    assert not is_safe_name("../x") and not is_safe_name("/abs") and not is_safe_name("a" * 65)


# ------------------------------------------------------------------------------------ thresher select
from thresher.data.fingerprint import data_fingerprint  # noqa: E402

from samples import ALPACA  # noqa: E402


@pytest.fixture()
def scored(tmp_path, monkeypatch, capsys):
    """A `thresher score` run made from tmp_path/work with a relative data path; the manifest carries the
    data's abs_path and fingerprint (written here when `score` does not write them yet)."""
    work = tmp_path / "work"
    work.mkdir()
    data = work / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ALPACA[:8]), encoding="utf-8")
    monkeypatch.chdir(work)
    rc, err = _main(capsys, "score", "data.jsonl", "--scorer", "length", "--out", "run",
                    "--cache-dir", tmp_path / "cache")
    assert rc == 0, err
    man_path = work / "run" / "manifest.json"
    manifest = json.loads(man_path.read_text(encoding="utf-8"))
    assert manifest["data"]["path"] == "data.jsonl"
    manifest["data"].setdefault("abs_path", str(data))
    manifest["data"].setdefault("fingerprint", data_fingerprint(data))
    man_path.write_text(json.dumps(manifest), encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return work / "run", data


def _select(capsys, run, out, *extra):
    return _main(capsys, "select", run, "--out", out, "--top-k", 3, *extra)


def test_select_from_another_directory_uses_the_recorded_absolute_path(scored, capsys, tmp_path):
    run, data = scored
    rc, err = _select(capsys, run, "sel.jsonl")
    assert rc == 0, err
    rows = [json.loads(x) for x in (tmp_path / "elsewhere" / "sel.jsonl").read_text(encoding="utf-8").splitlines()]
    longest = sorted(ALPACA[:8], key=lambda r: len(r["output"]), reverse=True)[:3]
    assert sorted(r["output"] for r in rows) == sorted(r["output"] for r in longest)
    # a rerun replaces the file select wrote before (its .manifest.json is beside it)
    assert _select(capsys, run, "sel.jsonl", "--top-k", 2)[0] == 0
    assert len((tmp_path / "elsewhere" / "sel.jsonl").read_text(encoding="utf-8").splitlines()) == 2


def test_select_refuses_a_changed_data_file(scored, capsys):
    run, data = scored
    data.write_text(data.read_text(encoding="utf-8").replace("Canberra", "Sydney"), encoding="utf-8")
    rc, err = _select(capsys, run, "sel.jsonl")
    assert rc == 2 and len(err) == 1 and "no longer matches" in err[0] and str(data) in err[0]


def test_select_refuses_out_equal_to_the_input_and_leaves_it_unchanged(scored, capsys):
    run, data = scored
    before = data.read_bytes()
    for out in (data, f"../work/{data.name}"):
        rc, err = _select(capsys, run, out)
        assert rc == 2 and len(err) == 1 and "input" in err[0], err
    assert data.read_bytes() == before


def test_select_refuses_a_folder_a_users_file_and_an_unknown_suffix(scored, capsys, tmp_path):
    run, _ = scored
    folder = tmp_path / "elsewhere" / "picked"
    folder.mkdir()
    rc, err = _select(capsys, run, folder)
    assert rc == 2 and len(err) == 1 and "is a folder" in err[0]

    mine = tmp_path / "elsewhere" / "notes.jsonl"
    mine.write_text("my own notes\n", encoding="utf-8")
    rc, err = _select(capsys, run, mine)
    assert rc == 2 and len(err) == 1 and "not written by thresher" in err[0]
    assert mine.read_text(encoding="utf-8") == "my own notes\n"

    for name in ("x.csv", "x"):
        rc, err = _select(capsys, run, name)
        assert rc == 2 and len(err) == 1, err
        assert ".json" in err[0] and ".jsonl" in err[0] and ".parquet" in err[0]
        assert not (tmp_path / "elsewhere" / name).exists()


# ------------------------------------------------------------------------------------ merge
from thresher.outputs import MARKER, atomic_dir, claim_output_dir, read_marker  # noqa: E402
from thresher.errors import ConfigError  # noqa: E402


def _fake_lora_run(path):
    """Enough of a finished LoRA training run for merge's checks, which come before any weight is read."""
    (path / "final").mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"config": {"lora": True, "model": "bundled"},
                                                  "model": "bundled"}), encoding="utf-8")
    (path / "final" / "adapter_config.json").write_text(json.dumps(
        {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": "bundled"}),
        encoding="utf-8")
    (path / "train_ids.json").write_text(json.dumps({"ids": ["a"]}), encoding="utf-8")
    return path


def test_merge_never_replaces_a_users_folder_nor_the_current_directory(tmp_path, capsys, monkeypatch):
    a, b = _fake_lora_run(tmp_path / "runA"), _fake_lora_run(tmp_path / "runB")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work", encoding="utf-8")
    rc, err = _main(capsys, "merge", a, b, "--out", victim)
    assert rc == 2 and len(err) == 1 and "thesis.tex" in err[0] and "never replaces" in err[0]
    assert sorted(p.name for p in victim.iterdir()) == ["thesis.tex"]
    assert (victim / "thesis.tex").read_text(encoding="utf-8") == "years of work"

    monkeypatch.chdir(victim)
    rc, err = _main(capsys, "merge", a, b, "--out", ".")
    assert rc == 2 and len(err) == 1 and "current directory" in err[0]
    assert sorted(p.name for p in victim.iterdir()) == ["thesis.tex"]


def test_atomic_dir_replaces_only_its_own_kind_and_keeps_it_on_failure(tmp_path):
    out = tmp_path / "m"
    with atomic_dir(out, "merge") as tmp:
        (tmp / "a.txt").write_text("1", encoding="utf-8")
    assert read_marker(out)["kind"] == "merge" and (out / "a.txt").read_text(encoding="utf-8") == "1"
    with pytest.raises(RuntimeError):
        with atomic_dir(out, "merge") as tmp:
            (tmp / "a.txt").write_text("half", encoding="utf-8")
            raise RuntimeError("killed mid-write")
    assert (out / "a.txt").read_text(encoding="utf-8") == "1"            # the earlier output is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]           # no temporary folder left behind
    with atomic_dir(out, "merge") as tmp:
        (tmp / "b.txt").write_text("2", encoding="utf-8")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "b.txt"]
    with pytest.raises(ConfigError, match="holds a thresher merge output, not a export output"):
        with atomic_dir(out, "export"):
            pass
    assert (out / "b.txt").is_file()
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="input"):
        claim_output_dir(tmp_path, "merge", inputs=[data])
    with pytest.raises(ConfigError, match="input"):
        claim_output_dir(data, "merge", inputs=[data])


# ------------------------------------------------------------------------------------ train and eval
@pytest.fixture()
def data_dir(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    data = work / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ALPACA[:4]), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return data


def test_train_refuses_a_users_folder_the_data_and_its_folder(data_dir, capsys, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine", encoding="utf-8")
    before = data_dir.read_bytes()
    for out, words in ((victim, "keep.txt"), (data_dir, "input"), (data_dir.parent, "input"),
                       (".", "current directory")):
        rc, err = _main(capsys, "train", data_dir, "--out", out, "--max-steps", 1, "--cpu-small")
        assert rc == 2 and len(err) == 1 and words in err[0], (out, err)
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    assert data_dir.read_bytes() == before and sorted(p.name for p in data_dir.parent.iterdir()) == ["data.jsonl"]


def test_eval_refuses_a_users_folder_and_the_questions_folder(data_dir, capsys, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine", encoding="utf-8")
    rc, err = _main(capsys, "eval", "bundled", "--out", victim)
    assert rc == 2 and len(err) == 1 and "keep.txt" in err[0], err
    rc, err = _main(capsys, "eval", "bundled", "--bench", data_dir, "--out", data_dir.parent)
    assert rc == 2 and len(err) == 1 and "input" in err[0], err
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in data_dir.parent.iterdir()) == ["data.jsonl"]


def test_runs_written_before_markers_are_still_resumed(tmp_path):
    from thresher.evaluation.run import _claim_eval_dir
    from thresher.training.sft import _claim_run_dir

    train_run, eval_run, other = tmp_path / "t", tmp_path / "e", tmp_path / "u"
    for folder, files in ((train_run, ("config.json", "train_ids.json")), (eval_run, ("report.json",)),
                          (other, ("config.json",))):
        folder.mkdir()
        for name in files:
            (folder / name).write_text("{}", encoding="utf-8")
    _claim_run_dir(train_run, [])
    _claim_eval_dir(eval_run, [])
    assert read_marker(train_run)["kind"] == "train" and read_marker(eval_run)["kind"] == "eval"
    _claim_run_dir(train_run, [])                                         # and again: its own folder
    with pytest.raises(ConfigError, match="holds a thresher train output, not a eval output"):
        _claim_eval_dir(train_run, [])
    with pytest.raises(ConfigError, match="did not write"):
        _claim_run_dir(other, [])                      # a config.json alone is not a training run
    assert read_marker(other) is None


# ------------------------------------------------------------------------------------ data fingerprints
def test_data_fingerprint_of_files_large_files_and_folders(tmp_path, monkeypatch):
    import hashlib

    import thresher.data.fingerprint as fpm

    f = tmp_path / "d.jsonl"
    f.write_bytes(b"0123456789" * 10)
    fp = data_fingerprint(f)
    assert fp["abs_path"] == str(f.resolve()) and fp["kind"] == "file" and fp["size"] == 100
    assert fp["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest() and fp["hashed"] == "full"
    assert data_fingerprint(tmp_path / "org/name") is None                # a hub name: nothing on disk

    monkeypatch.setattr(fpm, "FULL_HASH_LIMIT", 50)
    monkeypatch.setattr(fpm, "_PART", 20)
    big = data_fingerprint(f)
    data = f.read_bytes()
    assert big["hashed"] == "head+tail+size"
    assert big["sha256"] == hashlib.sha256(data[:20] + data[-20:] + b"100").hexdigest()
    f.write_bytes(data[:50] + b"X" + data[51:])                           # the middle: not seen, documented
    assert data_fingerprint(f)["sha256"] == big["sha256"]
    f.write_bytes(data[:-1] + b"X")
    assert data_fingerprint(f)["sha256"] != big["sha256"]

    d = tmp_path / "hf"
    (d / "sub").mkdir(parents=True)
    (d / "a.arrow").write_bytes(b"abc")
    (d / "sub" / "b.json").write_bytes(b"{}")
    one = data_fingerprint(d)
    assert one["kind"] == "dir" and one["size"] == 5 and one["hashed"] == "listing"
    assert data_fingerprint(d) == one
    (d / "a.arrow").write_bytes(b"abcd")
    assert data_fingerprint(d)["sha256"] != one["sha256"]


def test_select_on_an_old_manifest_resolves_against_its_recorded_cwd(scored, capsys, tmp_path):
    run, data = scored
    man_path = run / "manifest.json"
    manifest = json.loads(man_path.read_text(encoding="utf-8"))
    for key in ("abs_path", "fingerprint", "cwd"):       # a manifest from before these were recorded
        manifest["data"].pop(key, None)
    man_path.write_text(json.dumps(manifest), encoding="utf-8")
    rc, err = _select(capsys, run, "a.jsonl")                 # as before: relative to the current directory
    assert rc == 2 and len(err) == 1 and "data.jsonl" in err[0]
    manifest["data"]["cwd"] = str(data.parent)
    man_path.write_text(json.dumps(manifest), encoding="utf-8")
    rc, err = _select(capsys, run, "a.jsonl")
    assert rc == 0, err
    assert len((tmp_path / "elsewhere" / "a.jsonl").read_text(encoding="utf-8").splitlines()) == 3


def test_select_names_a_moved_data_file(scored, capsys):
    run, data = scored
    data.rename(data.with_name("moved.jsonl"))
    rc, err = _select(capsys, run, "sel.jsonl")
    assert rc == 2 and len(err) == 1 and "moved or deleted" in err[0] and str(data) in err[0]
