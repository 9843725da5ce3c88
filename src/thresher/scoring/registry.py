"""Name -> "module:Class" registry. Modules are imported only when a scorer is used."""

from __future__ import annotations

import importlib

from thresher.config import did_you_mean
from thresher.errors import RegistryError

SCORERS: dict[str, str] = {}


def register(name: str, target: str) -> None:
    if name in SCORERS:
        raise RegistryError(f"Scorer {name!r} is already registered (as {SCORERS[name]}).")
    SCORERS[name] = target


register("ifd", "thresher.scoring.ifd:IFDScorer")
register("perplexity", "thresher.scoring.perplexity:PerplexityScorer")
register("length", "thresher.scoring.length:LengthScorer")
register("random", "thresher.scoring.random:RandomScorer")
register("judge", "thresher.scoring.judge:JudgeRatingScorer")
register("embedding", "thresher.scoring.embedding:EmbeddingScorer")
register("knn", "thresher.scoring.rareness:KNNRarenessScorer")
register("ds2_curation", "thresher.scoring.curation_scorer:DS2CurationScorer")
register("opencs_tags", "thresher.scoring.opencs:OpenCSTagScorer")
register("opencs_clusters", "thresher.scoring.opencs:OpenCSClusterScorer")
register("opencs_pairs", "thresher.scoring.opencs:OpenCSPairScorer")
register("less", "thresher.scoring.gradient:LessScorer")
register("clues", "thresher.scoring.gradient:CluesScorer")
register("datainf", "thresher.scoring.gradient:DataInfScorer")


def get_scorer(name: str):
    if name not in SCORERS:
        raise RegistryError(f"Unknown scorer {name!r}.{did_you_mean(name, SCORERS)} "
                            f"Known scorers: {', '.join(sorted(SCORERS))}.")
    module, cls = SCORERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_scorer(name: str, **params):
    return get_scorer(name)(**params)
