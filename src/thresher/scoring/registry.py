"""The scorers by name (thresher.registry: modules are imported only when a scorer is used)."""

from __future__ import annotations

from thresher.registry import Registry

SCORERS = Registry("scorer")
SCORERS.register("ifd", "thresher.scoring.ifd:IFDScorer")
SCORERS.register("perplexity", "thresher.scoring.perplexity:PerplexityScorer")
SCORERS.register("length", "thresher.scoring.length:LengthScorer")
SCORERS.register("random", "thresher.scoring.random:RandomScorer")
SCORERS.register("judge", "thresher.scoring.judge:JudgeRatingScorer")
SCORERS.register("embedding", "thresher.scoring.embedding:EmbeddingScorer")
SCORERS.register("knn", "thresher.scoring.rareness:KNNRarenessScorer")
SCORERS.register("ds2_curation", "thresher.scoring.ds2_curation:DS2CurationScorer")
SCORERS.register("opencs_tags", "thresher.scoring.opencs:OpenCSTagScorer")
SCORERS.register("opencs_clusters", "thresher.scoring.opencs:OpenCSClusterScorer")
SCORERS.register("opencs_pairs", "thresher.scoring.opencs:OpenCSPairScorer")
SCORERS.register("less", "thresher.scoring.less:LessScorer")
SCORERS.register("clues", "thresher.scoring.clues:CluesScorer")
SCORERS.register("datainf", "thresher.scoring.datainf:DataInfScorer")


def get_scorer(name: str):
    return SCORERS.get(name)


def make_scorer(name: str, **params):
    return get_scorer(name)(**params)
