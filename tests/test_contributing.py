"""The README's "adding a method" example, run as written: its scorer, selector, recipe and test file are taken
from README.md's code blocks, put into a temporary package, found by ``Registry.discover`` (no list edited),
checked by ``thresher validate`` and run by ``thresher run``; the example's own test passes."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from thresher.cli import main
from thresher.registry import Registry
from thresher.scoring import SCORERS
from thresher.selection import SELECTORS

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```(python|yaml) (\S+)\n(.*?)^```$", re.M | re.S)


def _blocks() -> dict[str, str]:
    """{path in the repository: code} of the README's code blocks that name a file."""
    return {path: code for _, path, code in BLOCK.findall(README.read_text(encoding="utf-8"))}


@pytest.fixture
def example(tmp_path, monkeypatch):
    """The README's scorer and selector as the package ``readme_example``, registered under their names."""
    blocks = _blocks()
    assert {"src/thresher/scoring/echo.py", "src/thresher/selection/band.py", "src/thresher/recipes/echo.yaml",
            "tests/test_echo.py"} <= set(blocks), sorted(blocks)
    pkg = tmp_path / "pkgs" / "readme_example"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "echo.py").write_text(blocks["src/thresher/scoring/echo.py"])
    (pkg / "band.py").write_text(blocks["src/thresher/selection/band.py"])
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    found = Registry("component")
    found.discover("readme_example")                       # read, not imported
    assert found.names() == ["band", "echo"] and "readme_example" not in sys.modules
    monkeypatch.setitem(SCORERS._all(), "echo", found.target("echo"))        # removed again after the test
    monkeypatch.setitem(SELECTORS._all(), "band", found.target("band"))
    recipe = tmp_path / "echo.yaml"
    recipe.write_text(blocks["src/thresher/recipes/echo.yaml"])
    yield {"blocks": blocks, "recipe": recipe}
    for name in [m for m in sys.modules if m.split(".")[0] == "readme_example"]:
        del sys.modules[name]


def test_the_readme_example_validates_runs_and_its_test_passes(example, tmp_path, capsys):
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    # row i repeats i + 1 of its instruction's 10 words: echo (i + 1) / 10, all distinct
    rows = [{"instruction": " ".join(words), "output": " ".join(words[: i + 1] + [f"new{i}x{j}" for j in range(9 - i)])}
            for i in range(10)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["validate", str(example["recipe"])]) == 0
    assert main(["run", str(example["recipe"]), "--data", str(data), "--out", str(tmp_path / "run")]) == 0
    scores = pd.read_parquet(tmp_path / "run" / "scores.parquet")
    echo = scores["echo"].to_numpy()
    lo, hi = pd.Series(echo).quantile([0.0, 0.9], interpolation="linear")
    want = [i for i, v in enumerate(echo) if lo <= v <= hi]
    kept = (tmp_path / "run" / "selected_ids.txt").read_text().split()
    assert echo.tolist() == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert kept == [scores["id"][i] for i in want] and len(kept) == 9          # the top echo (1.0) is dropped

    namespace: dict = {}
    exec(compile(example["blocks"]["tests/test_echo.py"], "README:tests/test_echo.py", "exec"), namespace)
    (tmp_path / "own").mkdir()
    namespace["test_echo_is_the_share_of_response_words_in_the_instruction"](tmp_path / "own")


def test_the_readme_selector_rejects_a_band_upside_down_at_validate(example, tmp_path, capsys):
    raw = yaml.safe_load(example["recipe"].read_text())
    raw["stages"][0]["select"]["params"] = {"low": 0.8, "high": 0.2}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(bad)]) == 2
    assert "The 'high' parameter of selector 'band' must be a float in (low, 1]" in capsys.readouterr().err


def test_ls_shows_the_new_components_parameters(example, capsys):
    assert main(["ls", "scorers", "echo"]) == 0 and "compare words case-insensitively" in capsys.readouterr().out
    assert main(["ls", "selectors", "band"]) == 0 and "upper quantile of the band" in capsys.readouterr().out
