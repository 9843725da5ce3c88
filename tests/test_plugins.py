"""Components from outside thresher (thresher.registry): a ``module:Class`` name in `--scorer`, a recipe's scorer
and selector, and installed plugins found through the ``thresher.scorers`` / ``thresher.selectors`` entry-point
groups. The plugin is real: a module and a ``*.dist-info`` (METADATA, entry_points.txt) in a folder on the path,
which importlib.metadata reads as an installed distribution. Nothing here mocks the registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

from thresher.cli import main
from thresher.errors import RegistryError
from thresher.registry import Registry
from thresher.scoring import SCORERS
from thresher.scoring.base import Scorer
from thresher.selection import SELECTORS
from thresher.selection.base import Selector

from samples import ALPACA

SRC = Path(__file__).resolve().parents[1] / "src"

PLUGIN = textwrap.dedent('''
    """A scorer and a selector written outside thresher."""
    from dataclasses import dataclass

    import numpy as np

    from thresher.config import option
    from thresher.scoring.base import Scorer
    from thresher.selection.basic import TopKSelector


    @dataclass
    class WordParams:
        scale: float = option(1.0, help="multiplies the word count")


    class WordCountScorer(Scorer):
        """Words in the response (times scale)."""
        name = "word_count"
        Params = WordParams
        produces = {"words": "response words x scale"}
        main_column = "words"
        higher_is_better = True
        uses = ()

        def model_identity(self, ctx):
            return "none"

        def score_batch(self, rows):
            words = [len(m[-1]["content"].split()) for m in rows.messages]
            return {"words": np.asarray(words, dtype=np.float64) * self.params.scale}


    class LongestFirst(TopKSelector):
        """top_k under another name."""
        name = "longest_first"


    class Nameless(Scorer):
        Params = WordParams


    NOT_A_CLASS = 3
''')


def make_plugin(root: Path, module: str, entry_points: dict[str, dict[str, str]]) -> Path:
    """``root`` holding ``module``.py (PLUGIN) and an installed-package record whose entry points are
    ``{group: {name: target}}``: what `pip install` of a package with those entry points leaves behind."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(PLUGIN, encoding="utf-8")
    info = root / f"{module}_dist-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}-dist\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in eps.items()) + "\n"
        for group, eps in entry_points.items()), encoding="utf-8")
    return root


def thresher_cli(args: list[str], path: Path, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m thresher ARGS` in a fresh process with ``path`` on PYTHONPATH (a fresh registry)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(path)])}
    return subprocess.run([sys.executable, "-m", "thresher", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def write_data(path: Path, n: int = 6) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in ALPACA[:n]), encoding="utf-8")
    return path


def words(n: int) -> list[float]:
    return [float(len(r["output"].split())) for r in ALPACA[:n]]


# ------------------------------------------------------------------------------------------ module:Class
def test_a_module_class_scorer_runs_end_to_end_through_thresher_score(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(make_plugin(tmp_path / "plug", "guard_mc", {})))
    data = write_data(tmp_path / "d.jsonl")
    out = tmp_path / "run"
    assert main(["score", str(data), "--scorer", "guard_mc:WordCountScorer", "--param", "scale=2",
                 "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    scores = pd.read_parquet(out / "scores.parquet")
    assert scores["words"].tolist() == [2 * w for w in words(6)]
    assert (out / "word_count" / "scores.parquet").is_file()           # the stage folder: the class's name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"][0]["scorers"][0]["scorer"] == "word_count"


def test_module_class_scorer_and_selector_in_a_recipe(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(make_plugin(tmp_path / "plug", "guard_rc", {})))
    data = write_data(tmp_path / "d.jsonl")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "mine", "stages": [{
        "name": "s", "score": [{"scorer": "guard_rc:WordCountScorer"}],
        "select": {"selector": "guard_rc:LongestFirst", "params": {"k": 2}}}]}), encoding="utf-8")
    assert main(["run", str(recipe), "--data", str(data), "--out", str(tmp_path / "run"),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    kept = (tmp_path / "run" / "selected_ids.txt").read_text().split()
    scores = pd.read_parquet(tmp_path / "run" / "scores.parquet")
    assert kept == scores.sort_values("words", ascending=False, kind="stable")["id"].head(2).tolist()


@pytest.mark.parametrize("spec,message", [
    ("guard_missing_mod:X", "no module named 'guard_missing_mod'"),
    ("guard_err:Nope", "module 'guard_err' has no attribute 'Nope'"),
    ("guard_err:NOT_A_CLASS", "is a int, not a scorer (a subclass of thresher.scoring.base.Scorer)"),
    ("guard_err:LongestFirst", "the class LongestFirst, not a scorer"),
    ("guard_err:Nameless", "sets no name"),
    ("guard_err:", "expected 'module:Class'"),
])
def test_module_class_errors_name_the_module(spec, message, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(make_plugin(tmp_path / "plug", "guard_err", {})))
    with pytest.raises(RegistryError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SCORERS.get(spec)
    data = write_data(tmp_path / "d.jsonl")
    assert main(["score", str(data), "--scorer", spec, "--out", str(tmp_path / "run"),
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert f"thresher: error: Scorer {spec!r}" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_scorer_is_not_a_selector(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(make_plugin(tmp_path / "plug", "guard_sel", {})))
    assert SELECTORS.get("guard_sel:LongestFirst").name == "longest_first"
    with pytest.raises(RegistryError, match="not a selector"):
        SELECTORS.get("guard_sel:WordCountScorer")


# ------------------------------------------------------------------------------------------ entry points
def test_installed_plugins_are_found_by_entry_point_on_first_lookup(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(make_plugin(tmp_path / "plug", "guard_ep", {
        "thresher.scorers": {"word_count": "guard_ep:WordCountScorer"},
        "thresher.selectors": {"longest_first": "guard_ep:LongestFirst"}})))
    scorers = Registry("scorer", base=Scorer, group="thresher.scorers")
    scorers.discover("thresher.scoring")
    assert "guard_ep" not in sys.modules                       # found, not imported
    assert scorers.target("word_count") == "guard_ep:WordCountScorer" and "ifd" in scorers
    assert scorers.get("word_count").__name__ == "WordCountScorer"
    selectors = Registry("selector", base=Selector, group="thresher.selectors")
    assert selectors.get("longest_first").name == "longest_first"


def test_a_plugin_name_that_is_taken_is_an_error_naming_both(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(make_plugin(tmp_path / "plug", "guard_dup", {
        "thresher.scorers": {"length": "guard_dup:WordCountScorer"}})))
    scorers = Registry("scorer", base=Scorer, group="thresher.scorers")
    scorers.discover("thresher.scoring")
    with pytest.raises(RegistryError) as e:
        scorers.get("ifd")
    msg = str(e.value)
    assert "'length'" in msg and "guard_dup:WordCountScorer" in msg and "thresher.scoring.length:LengthScorer" in msg
    assert "guard_dup-dist" in msg and "'thresher.scorers'" in msg


def test_a_plugin_entry_point_must_be_a_scorer(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(make_plugin(tmp_path / "plug", "guard_bad", {
        "thresher.scorers": {"bad": "guard_bad:LongestFirst"}})))
    scorers = Registry("scorer", base=Scorer, group="thresher.scorers")
    with pytest.raises(RegistryError, match="Scorer 'bad': guard_bad:LongestFirst is the class LongestFirst, not a"):
        scorers.get("bad")


def test_the_cli_lists_and_runs_an_installed_plugin(tmp_path):
    """A fresh process, as a user has it after `pip install` of a plugin package: `ls` lists the plugin's scorer
    and its parameters, `score --scorer NAME` runs it."""
    plug = make_plugin(tmp_path / "plug", "guard_cli", {"thresher.scorers": {"word_count": "guard_cli:WordCountScorer"}})
    listing = thresher_cli(["ls", "scorers"], plug, tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert any(line.split()[:1] == ["word_count"] and "Words in the response" in line
               for line in listing.stdout.splitlines())
    one = thresher_cli(["ls", "scorers", "word_count"], plug, tmp_path)
    assert one.returncode == 0 and "scale" in one.stdout and "multiplies the word count" in one.stdout
    data = write_data(tmp_path / "d.jsonl", 4)
    run = thresher_cli(["score", str(data), "--scorer", "word_count", "--out", str(tmp_path / "run"),
                        "--cache-dir", str(tmp_path / "cache")], plug, tmp_path)
    assert run.returncode == 0, run.stderr
    assert pd.read_parquet(tmp_path / "run" / "scores.parquet")["words"].tolist() == words(4)
