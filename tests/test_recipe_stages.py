"""Recipe training stages, "@" references, per-client runs and the global threshold.

Validation needs no model. The per-client run uses the length scorer (tokenizer only), so the global
threshold rule can be checked by hand: tau = the minimum (or mean, or a quantile) of the anchor rows'
token counts, pooled over clients; every client keeps its rows at or above tau. The IterIT recipe runs
the bundled model for two tiny epochs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from transformers import AutoTokenizer

from thresher.cli import main
from thresher.errors import ConfigError
from thresher.pipeline.recipe import check_recipe

from samples import ALPACA


def stage_recipe(*stages, **top):
    return {"name": "t", "data": {"path": "x.jsonl"}, "stages": list(stages), **top}


SCORE = {"name": "s", "score": [{"scorer": "length"}], "select": {"selector": "top_k", "params": {"k": 2}}}


@pytest.mark.parametrize("stages, message", [
    ([{"name": "t", "train": {"rows": "previous"}}], "needs an earlier stage that selects"),
    ([SCORE, {"name": "t", "train": {"rows": "nope"}}], "must be previous, all or the name of an earlier scoring"),
    ([SCORE, {"name": "t", "train": {"fraction": 1.5}}], "'fraction' parameter"),
    ([SCORE, {"name": "t", "train": {"params": {"lr": -1}}}], "'lr' parameter"),
    ([SCORE, {"name": "t", "train": {"preset": "cheri"}}], "Did you mean 'cherry'"),
    ([SCORE, {"name": "t", "train": {"params": {"epochs": 1}}, "score": [{"scorer": "length"}]}], "not both"),
    ([SCORE, {"name": "t", "train": {}}, {"name": "u", "model": "@t", "score": [{"scorer": "length"}]}],
     "set merge: true"),
    ([SCORE, {"name": "u", "model": "@w", "score": [{"scorer": "length"}]}], "names no earlier training stage"),
    ([SCORE, {"name": "s", "score": [{"scorer": "length"}]}], "used twice"),
    ([{"name": "t", "train": {"rows": "all", "iterit": {"ratio": 0.1, "decay": 2}}}], "'decay' parameter"),
    ([{"name": "t", "train": {"rows": "all", "iterit": {"ratio": 0.1, "windw": 2}}}], "has no parameter 'windw'"),
    ([{"name": "t", "train": {"rows": "all"}}], "every stage trains and none selects"),
    ([{"name": "s", "score": [{"scorer": "length"}], "select": {"selector": "global_threshold",
                                                                "params": {"rule": "quantile"}}}], "'q' parameter"),
    ([{"name": "s", "score": [{"scorer": "length"}], "select": {"selector": "global_threshold",
                                                                "params": {"ratio": 0.5}}}], "no parameter 'ratio'"),
])
def test_stage_validation_errors(stages, message):
    with pytest.raises(ConfigError, match=message):
        check_recipe(stage_recipe(*stages), "<test>")


GT = {"name": "s", "score": [{"scorer": "length"}], "select": {"selector": "global_threshold"}}


@pytest.mark.parametrize("stages, collab, message", [
    ([SCORE], {"train": {"preset": "clues"}}, "last stage must select with 'global_threshold'"),
    ([GT], {"train": {"preset": "clues", "rows": "all"}}, "rows, fraction, iterit and merge do not apply"),
    ([GT], {"train": {"preset": "cherry"}}, "must use LoRA"),
    ([GT], {"train": {"preset": "clues", "params": {"lr": -1}}}, "'lr' parameter"),
    ([GT], {"train": {"preset": "clues"}, "merge": {"method": "average"}}, "merge: .*average"),
    ([GT], {"train": {"preset": "clues"}, "merge": {"density": 0}}, "merge: .*density"),
    ([GT], {"train": {"preset": "clues"}, "merge": {"densty": 0.5}}, "merge has no parameter 'densty'"),
    ([GT], {"trian": {}}, "trian"),
])
def test_collaborate_validation_errors(stages, collab, message):
    with pytest.raises(ConfigError, match=message):
        check_recipe(stage_recipe(*stages, collaborate=collab), "<test>")


def test_packaged_clues_recipe_collaborates_with_ties():
    from thresher.pipeline.recipe import check_collaborate, load_recipe

    recipe, _, stages = load_recipe("clues")
    tc, opts = check_collaborate(recipe.collaborate, stages, "clues")
    assert tc.preset == "clues" and opts == {"method": "ties", "density": 0.2, "weights": None, "full": True}


def test_valid_training_stages_and_references():
    _, _, st = check_recipe(stage_recipe(
        SCORE, {"name": "t", "train": {"rows": "s", "fraction": 0.5, "merge": True, "preset": "clues"}},
        {"name": "u", "model": "@t", "score": [{"scorer": "length"}]}), "<test>")
    assert [s.is_train for s in st] == [False, True, False] and st[2].model == "@t"
    assert st[1].train.preset == "clues" and st[1].train.fraction == 0.5


def test_train_rows_fraction_is_seeded_and_in_table_order():
    from thresher.pipeline.config import TrainStageConfig
    from thresher.pipeline.train_stage import train_rows

    sel = {"s": np.array([9, 3, 7, 1, 5, 2, 8, 0, 4, 6])}
    assert train_rows(TrainStageConfig(rows="s"), 10, sel, "s").tolist() == [9, 3, 7, 1, 5, 2, 8, 0, 4, 6]
    a = train_rows(TrainStageConfig(rows="all", fraction=0.3, seed=1), 20, sel, "s")
    b = train_rows(TrainStageConfig(rows="all", fraction=0.3, seed=1), 20, sel, "s")
    c = train_rows(TrainStageConfig(rows="all", fraction=0.3, seed=2), 20, sel, "s")
    assert a.tolist() == b.tolist() and len(a) == 6 and a.tolist() == sorted(a.tolist()) and a.tolist() != c.tolist()
    assert len(train_rows(TrainStageConfig(rows="previous", fraction=0.01), 10, sel, "s")) == 1


def test_target_reference_needs_target_files():
    from thresher.pipeline.config import Recipe
    from thresher.pipeline.recipe import resolve_refs

    r = Recipe(name="less", target=["/a.jsonl", "/b.jsonl"], anchor="/anc.jsonl")
    got = resolve_refs({"target": ["@target"], "v": "@anchor", "c": "@warm", "n": 3, "val": ["@validation"]},
                       r, {"warm": "/runs/w"})
    assert got == {"target": ["/a.jsonl", "/b.jsonl"], "v": "/anc.jsonl", "c": "/runs/w", "n": 3,
                   "val": ["/anc.jsonl"]}                       # no validation files: the anchor set
    r.validation = ["/v1.jsonl", "/v2.jsonl"]
    assert resolve_refs(["@validation"], r, {}) == ["/v1.jsonl", "/v2.jsonl"]
    with pytest.raises(ConfigError, match=r"pass target=FILE \[FILE \.\.\.\]"):          # from Python: keywords
        resolve_refs({"target": "@target"}, Recipe(name="less"), {})
    with pytest.raises(ConfigError, match="pass anchor=FILE"):
        resolve_refs({"validation": ["@anchor"]}, Recipe(name="clues"), {})


# ------------------------------------------------------------------------------ clients, global threshold
def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok():
    from thresher.models.bundled import converted_model_dir
    return AutoTokenizer.from_pretrained(converted_model_dir())


def n_tokens(tok, rows):
    return np.array([len(tok(r["output"], add_special_tokens=False)["input_ids"]) for r in rows])


@pytest.mark.parametrize("rule, q", [("min", None), ("mean", None), ("quantile", 0.5)])
def test_clients_share_only_the_anchor_threshold(tmp_path, capsys, tok, rule, q):
    rows = [dict(r, id=f"r{i}", good=int(i % 3 != 0)) for i, r in enumerate(ALPACA)]
    a = write_jsonl(tmp_path / "a.jsonl", rows[:8])
    b = write_jsonl(tmp_path / "b.jsonl", rows[8:])
    anchor_rows = [ALPACA[1], ALPACA[12], ALPACA[4]]
    anchor = write_jsonl(tmp_path / "anchor.jsonl", anchor_rows)
    recipe = tmp_path / "r.yaml"
    params = {"rule": rule, **({"q": q} if q is not None else {})}
    recipe.write_text(json.dumps({"name": "lens", "data": {"path": "unused"}, "stages": [
        {"name": "len", "score": [{"scorer": "length"}], "select": {"selector": "global_threshold", "params": params}}]}))
    run = tmp_path / "run"
    assert main(["run", str(recipe), "--clients", str(a), str(b), "--anchor", str(anchor), "--labels", "good",
                 "--out", str(run), "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out

    anc = n_tokens(tok, anchor_rows)
    tau = {"min": anc.min(), "mean": anc.mean(), "quantile": np.quantile(anc, 0.5)}[rule]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_threshold"]["tau"] == pytest.approx(tau)
    keep_all, good_all = [], []
    for name, part in (("a", rows[:8]), ("b", rows[8:])):
        keep = n_tokens(tok, part) >= tau
        got = (run / "clients" / name / "len" / "selected_ids.txt").read_text().split()
        assert got == [r["id"] for r, k in zip(part, keep) if k]
        selected = [json.loads(x) for x in (run / "clients" / name / "len" / "selected.jsonl").read_text().splitlines()]
        assert selected == [r for r, k in zip(part, keep) if k]          # records unchanged
        scores = pd.read_parquet(run / "clients" / name / "len" / "scores.parquet")      # the client's own rows
        assert scores["selected"].tolist() == keep.tolist() and scores["row"].tolist() == list(range(len(part)))
        assert scores.loc[scores["selected"]].sort_values("rank")["id"].tolist() == got
        anchor_scores = pd.read_parquet(run / "clients" / name / "len" / "anchor_scores.parquet")
        np.testing.assert_array_equal(anchor_scores["resp_tokens"], anc)
        keep_all.append(keep), good_all.append([r["good"] == 1 for r in part])
    keep, good = np.concatenate(keep_all), np.concatenate(good_all)
    tp = (keep & good).sum()
    o = summary["global_threshold"]["overall"]
    assert o["precision"] == pytest.approx(tp / keep.sum()) and o["recall"] == pytest.approx(tp / good.sum())
    assert f"tau = {tau:.6g}" in out and "client a:" in out and "overall: precision" in out


def test_clients_errors(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [dict(r, good="yes") for r in ALPACA[:3]])
    recipe = tmp_path / "r.yaml"
    stage = {"name": "len", "score": [{"scorer": "length"}], "select": {"selector": "global_threshold"}}
    recipe.write_text(json.dumps({"name": "lens", "stages": [stage]}))
    base = ["run", str(recipe), "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")]
    with pytest.raises(ConfigError, match="needs a trusted anchor set"):
        main_raising([*base, "--clients", str(a)])
    with pytest.raises(ConfigError, match="labels field must be 1/0 or true/false"):
        main_raising([*base, "--clients", str(a), "--anchor", str(a), "--labels", "good"])
    with pytest.raises(ConfigError, match="--anchor: .* does not exist"):
        main_raising([*base, "--clients", str(a), "--anchor", str(tmp_path / "missing.jsonl")])
    recipe.write_text(json.dumps({"name": "lens", "stages": [dict(stage, select={"selector": "top_k",
                                                                                   "params": {"k": 1}})]}))
    with pytest.raises(ConfigError, match="does not select with 'global_threshold'"):
        main_raising([*base, "--clients", str(a)])


def main_raising(argv):
    """The CLI's code path without its error printing: the ConfigError itself."""
    from thresher import cli

    args = cli.build_parser().parse_args(argv)
    args.argv = argv
    return args.func(args)


# ------------------------------------------------------------------------------ IterIT recipe
@pytest.mark.slow
def test_iterit_recipe_trains_and_writes_the_last_epochs_rows(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [dict(r, id=f"r{i}") for i, r in enumerate(ALPACA[:12])])
    run = tmp_path / "run"
    argv = ["run", "iterit", "--data", str(data), "--out", str(run), "--cache-dir", str(tmp_path / "cache"),
            "--set", "stages.0.train.preset=null", "--set", "stages.0.train.params.lora=true",
            "--set", "stages.0.train.params.epochs=2", "--set", "stages.0.train.params.max_length=96",
            "--set", "stages.0.train.params.lr=0.005", "--set", "stages.0.train.iterit.ratio=0.25",
            "--set", "stages.0.train.iterit.update_ratio=2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    logs = [json.loads((run / "iterit" / "iterit" / f"epoch-{e}.json").read_text()) for e in (0, 1)]
    assert sorted(logs[0]["rescored"]) == list(range(12)) and len(logs[1]["rescored"]) == 6   # window 2k
    assert (run / "selected_ids.txt").read_text().split() == logs[1]["selected_ids"]
    assert len(logs[1]["selected_ids"]) == 3                                                    # k = 0.25 x 12
    sel = [json.loads(x) for x in (run / "selected.jsonl").read_text().splitlines()]
    assert [r["id"] for r in sel] == logs[1]["selected_ids"]
    scores = pd.read_parquet(run / "iterit" / "scores.parquet")          # the selection, joinable by id/row
    assert list(scores.columns) == ["id", "row", "selected", "rank"] and scores["row"].tolist() == list(range(12))
    assert scores.loc[scores["selected"]].sort_values("rank")["id"].tolist() == logs[1]["selected_ids"]
    assert main(["export", str(run), "--to", "jsonl", str(tmp_path / "e.jsonl")]) == 0
    assert (tmp_path / "e.jsonl").read_text() == (run / "selected.jsonl").read_text()
    assert "stage iterit" in out and "trained on 12 of 12 rows" in out and (run / "iterit" / "final").is_dir()


# ------------------------------------------------------------------------------ CLUES end to end
@pytest.mark.slow
def test_clues_recipe_rejects_planted_corruption(tmp_path, capsys):
    """Two clients, each with every second response swapped for another question's answer (label good=0),
    a clean anchor set; local LoRA training per client, CLUES scores at two checkpoints, one global threshold
    from the anchors' scores. The corrupted rows must be rejected clearly better than chance."""
    from test_gradients import PAIRS

    pool, anchor_pairs, val_pairs = PAIRS[:16], PAIRS[16:20], PAIRS[20:24]
    answers = [a for _, a in pool]
    rows = [{"id": f"r{i}", "instruction": q, "input": "",
             "output": answers[(i + 5) % len(pool)] if i % 2 else a, "good": int(i % 2 == 0)}
            for i, (q, a) in enumerate(pool)]
    a = write_jsonl(tmp_path / "a.jsonl", rows[:8])
    b = write_jsonl(tmp_path / "b.jsonl", rows[8:])
    anchor = write_jsonl(tmp_path / "anchor.jsonl", [{"instruction": q, "input": "", "output": x}
                                                     for q, x in anchor_pairs])
    val = write_jsonl(tmp_path / "val.jsonl", [{"instruction": q, "input": "", "output": x} for q, x in val_pairs])
    run = tmp_path / "run"
    argv = ["run", "clues", "--clients", str(a), str(b), "--anchor", str(anchor), "--validation", str(val),
            "--labels", "good",
            "--out", str(run), "--cache-dir", str(tmp_path / "cache"),
            "--set", "stages.0.train.params.max_steps=4", "--set", "stages.0.train.params.save_steps=2",
            "--set", "stages.0.train.params.max_length=128", "--set", "stages.0.train.params.lr=0.002",
            "--set", "stages.0.train.params.turns=last",
            "--set", "collaborate.train.params.max_steps=2", "--set", "collaborate.train.params.max_length=128",
            "--set", "collaborate.train.params.turns=last"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    gt = summary["global_threshold"]
    scores = pd.concat([pd.read_parquet(run / "clients" / c / "clues" / "scores.parquet") for c in ("a", "b")])
    good = np.array([r["good"] == 1 for r in rows])
    s = scores["clues"].to_numpy()
    print(f"\nCLUES recipe: clean {np.round(s[good], 5)} swapped {np.round(s[~good], 5)} tau {gt['tau']:.5f} "
          f"overall {gt['overall']}")
    # Per client: two checkpoints of its own run, the anchor scored with them, tau = min over both clients.
    for c in ("a", "b"):
        assert json.loads((run / "clients" / c / "local_train" / "summary.json").read_text())["checkpoints"] == \
            ["checkpoint-2", "checkpoint-4"]
    anchors = np.concatenate([pd.read_parquet(run / "clients" / c / "clues" / "anchor_scores.parquet")["clues"]
                              for c in ("a", "b")])
    assert gt["tau"] == pytest.approx(anchors.min())
    keep = s >= gt["tau"]
    assert gt["clients"]["a"]["selected"] + gt["clients"]["b"]["selected"] == keep.sum()
    assert np.median(s[good]) > np.median(s[~good])
    assert keep.any() and gt["overall"]["precision"] > 0.5 + 1e-9               # base rate: half are good
    assert "global threshold (min of the anchor scores)" in out
    # Collaboration: each client trains on exactly the rows it kept; the server merges the adapters (TIES).
    collab = summary["collaborate"]
    trained = {}
    for c in ("a", "b"):
        kept = (run / "clients" / c / "clues" / "selected_ids.txt").read_text().split()
        if kept:
            ids = json.loads((run / "clients" / c / "collaborate" / "train_ids.json").read_text())["ids"]
            assert sorted(ids) == sorted(kept) and collab["clients"][c]["trained"] == len(kept)
            trained[c] = kept
        else:
            assert collab["clients"][c] == {"rows": 0, "note": "kept no row: not trained, not merged"}
    if len(trained) == 2:
        record = json.loads((run / "collaborate" / "merge.json").read_text())
        assert record["method"] == "ties" and record["density"] == 0.2 and record["weights"] == [1.0, 1.0]
        assert [r["rows"] for r in record["runs"]] == [len(trained["a"]), len(trained["b"])]
        assert (run / "collaborate" / "merged" / "config.json").exists()
        assert collab["model"] == str(run / "collaborate" / "merged") and "merged (ties, density 0.2)" in out
    else:
        assert "nothing to merge" in out


# ------------------------------------------------------------------------------ LESS and DataInf recipes
@pytest.mark.slow
def test_less_then_datainf_recipes_share_the_warmup(tmp_path, capsys):
    """`thresher run less --target T`: a LoRA warm-up on a seeded random fraction, LESS scores at its two
    checkpoints, the top ratio selected. `thresher run datainf` into the same folder reuses the finished
    warm-up (same settings, same rows: no training) and scores DataInf at its last checkpoint."""
    data = write_jsonl(tmp_path / "pool.jsonl", [dict(r, id=f"r{i}") for i, r in enumerate(ALPACA)])
    target = write_jsonl(tmp_path / "colours.jsonl", [
        {"instruction": "What colour is grass?", "input": "", "output": "Grass is green."},
        {"instruction": "Name a red fruit.", "input": "", "output": "A strawberry is a red fruit."}])
    run = tmp_path / "run"
    small = ["--set", "stages.0.train.fraction=0.5", "--set", "stages.0.train.params.epochs=2",
             "--set", "stages.0.train.params.max_length=96", "--set", "stages.0.train.params.lr=0.002",
             "--set", "stages.0.train.params.lora_r=4"]
    common = ["--data", str(data), "--target", str(target), "--out", str(run), "--cache-dir", str(tmp_path / "c")]
    assert main(["run", "less", *common, *small, "--set", "stages.1.score.0.params.proj_dim=512",
                 "--set", "stages.1.select.params.ratio=0.25"]) == 0
    warm = json.loads((run / "warmup" / "train_ids.json").read_text())
    assert len(warm["ids"]) + len(warm["skipped"]) == 8                        # 0.5 x 16 rows
    ckpts = json.loads((run / "warmup" / "summary.json").read_text())["checkpoints"]
    assert len(ckpts) == 2                                                       # one per epoch
    less = pd.read_parquet(run / "less" / "scores.parquet")
    s = less["less"].to_numpy()
    assert np.isfinite(s).all() and (np.abs(s) <= 1 + 1e-6).all() and np.ptp(s) > 0
    top = list(less["id"].to_numpy()[np.argsort(-s, kind="stable")[:4]])
    assert (run / "selected_ids.txt").read_text().split() == top

    stamp = (run / "warmup" / "final" / "adapter_model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["run", "datainf", *common, *small, "--set", "stages.1.select.params.ratio=0.25"]) == 0
    assert (run / "warmup" / "final" / "adapter_model.safetensors").stat().st_mtime_ns == stamp   # reused
    inf = pd.read_parquet(run / "datainf" / "scores.parquet")
    np.testing.assert_allclose(inf["datainf"], -inf["datainf_influence"])
    assert np.isfinite(inf["datainf"]).all() and np.ptp(inf["datainf"]) > 0
    top = list(inf["id"].to_numpy()[np.argsort(-inf["datainf"].to_numpy(), kind="stable")[:4]])
    assert (run / "selected_ids.txt").read_text().split() == top
