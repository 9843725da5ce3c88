"""OpenCS / TACOS (He et al.; METHODS.md 5): open tags, tag normalisation and clustering, contrastive
pairwise scoring inside clusters. Three scorers, run in this order in one stage:

opencs_tags      (rows, judge)  the judge lists the intention tags of each instruction as JSON;
                                column ``tags`` = JSON list of raw tag strings, ``status``.
opencs_clusters  (whole pool)   drop tags seen fewer than ``min_count`` times, normalise (lower-case,
                                punctuation to spaces, Porter stem), embed each unique tag once and
                                k-means them into ``n_clusters``; a sample's label set = its tags' clusters.
                                Among samples with the same label set only the longest response is kept
                                (``opencs_kept``), as the reference does.
opencs_pairs     (whole pool, judge) in each cluster pair consecutive kept members (0,1), (2,3), ... and
                                score both in one prompt, 0-100 each; a pair shared by clusters is judged
                                once. ``opencs_score`` = mean of a sample's pair scores (higher = better);
                                NaN with a status when it was never paired or the answer was unreadable.
Fixed reference bugs (not reproducible by option, they broke the pipeline): the parser reads the format the
prompt asks for; tags are clustered per unique tag; counts of raw tags that normalise alike are summed.
Tag embeddings use the bundled all-MiniLM-L6-v2 by default (the reference's PhraseBERT is not bundled;
pass ``embedder`` for another sentence-transformers model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from thresher.algorithms import opencs_tags as T
from thresher.algorithms.opencs_tags import clusters_from_columns, consecutive_pairs, parse_pair_scores, parse_tags, unique_pairs
from thresher.config import choice, option
from thresher.data.table import Dataset
from thresher.errors import ConfigError
from thresher.models.chat import ChatRequest
from thresher.scoring.base import Scorer
from thresher.scoring.judge import api_shards_in_flight, sample_fields
from thresher.scoring.prompts import load_prompt, prompt_sha


@dataclass
class TagParams:
    prompt: str = option("opencs_tag", help="packaged prompt name or a path to a YAML prompt file (a tags prompt)")
    max_tokens: int = option(256, help="tokens of each tagger reply (reference: 1024)")
    temperature: float = option(0.0, help="tagger sampling temperature (reference: 0.6 with gpt-4o-mini; "
                                          "0 keeps runs reproducible)")
    seed: int | None = option(None, help="tagger sampling seed")


class OpenCSTagScorer(Scorer):
    """OpenCS open intention tags of each instruction (judge call per sample)."""

    name = "opencs_tags"
    version = "2"                       # 2: the instruction between <<<SAMPLE markers
    Params = TagParams
    main_column = "tags"
    higher_is_better = None
    uses = ("judge",)
    produces = {"tags": "JSON list of raw tag strings ('null' when unreadable)", "status": "ok | unparsed | failed"}

    def param_dict(self) -> dict:
        return {**super().param_dict(), "prompt_sha": prompt_sha(self.params.prompt)}

    def setup(self, ctx) -> None:
        super().setup(ctx)
        ctx.judge()                             # built here, once: shards scored at once share it

    def shards_in_flight(self, shard_size: int) -> int:
        return api_shards_in_flight(self.ctx, shard_size)

    def score_batch(self, rows: Dataset) -> dict[str, np.ndarray]:
        p = self.params
        prompt = load_prompt(p.prompt)
        fields = [sample_fields(m, meta, "last") for m, meta in zip(rows.messages, rows.meta)]
        todo = [i for i, f in enumerate(fields) if f is not None]
        reqs = [ChatRequest.of(prompt.render(instruction=fields[i]["instruction"]), max_tokens=p.max_tokens,
                               temperature=p.temperature, seed=p.seed) for i in todo]
        results = self.ctx.judge().chat(reqs) if reqs else []
        tags = np.full(len(rows), "null", dtype=object)
        status = np.full(len(rows), "no response", dtype=object)
        for i, res in zip(todo, results):
            if res.text is None:
                status[i] = f"failed: {res.error}"
                self.transient_failures += int(res.transient)     # not final: the shard is not cached
                continue
            parsed = parse_tags(res.text)
            tags[i] = json.dumps(parsed, ensure_ascii=False) if parsed else "null"
            status[i] = "ok" if parsed else "unparsed"
        return {"tags": tags.astype(str), "status": status.astype(str)}


@dataclass
class ClusterParams:
    min_count: int = option(20, help="alpha: tags seen fewer times are dropped, an int >= 1 (reference: 20)")
    count: str = choice("raw", "raw", "normalised",
                        help="raw: count raw tag strings before normalising (reference); normalised: sum the raw "
                             "variants of a normalised tag")
    n_clusters: int = option(50, help="k-means clusters of the tags, an int >= 1 (reference: 50)")
    embedder: str | None = option(None, help="sentence-transformers model embedding the tags (null: the bundled "
                                             "all-MiniLM-L6-v2; reference: PhraseBERT)")
    seed: int = option(0, help="k-means random_state")

    def check(self, owner):
        if self.min_count < 1 or self.n_clusters < 1:
            raise ConfigError(f"The 'min_count' and 'n_clusters' parameters of {owner} must be ints >= 1. "
                              f"Got {self.min_count} and {self.n_clusters}.")


class OpenCSClusterScorer(Scorer):
    """OpenCS tag normalisation and clustering; one representative per label set."""

    name = "opencs_clusters"
    version = "1"
    Params = ClusterParams
    main_column = "label_set"
    higher_is_better = None
    uses = ("embedder",)
    scope = "dataset"
    produces = {"label_set": "JSON sorted list of tag-cluster ids ([] when no frequent tag)",
                "opencs_rank": "position among the label-set representatives (the order pairs are formed "
                               "in); -1 = not a representative"}

    def required_columns(self):
        return ("tags",)

    def model_identity(self, ctx) -> str:
        return ctx.embedder(self.params.embedder).identity()

    def score_batch(self, rows: Dataset, inputs=None) -> dict[str, np.ndarray]:
        p = self.params
        n = len(rows)
        raw = [json.loads(t) for t in inputs["tags"]]
        filtered, unique, _ = T.frequency_filter(raw, min_count=p.min_count, count=p.count)
        label_sets: list = [None] * n
        if unique:
            from sklearn.cluster import KMeans
            vecs = self.ctx.embedder(p.embedder).embed(list(unique))
            k = min(p.n_clusters, len(unique))
            ids = (KMeans(n_clusters=k, random_state=p.seed, n_init=10).fit_predict(vecs) if k > 1
                   else np.zeros(len(unique), dtype=np.int64))
            label_sets = T.cluster_labels(list(unique), np.asarray(ids, dtype=np.int64), filtered)
        fields = [sample_fields(m, meta, "last") for m, meta in zip(rows.messages, rows.meta)]
        lengths = np.array([len(f["response"]) if f else 0 for f in fields])
        reps = T.dedup_by_label_set(label_sets, lengths)           # first-seen order of label sets
        rank = np.full(n, -1, dtype=np.int64)
        rank[reps] = np.arange(len(reps))
        sets = [json.dumps([int(c) for c in (ls or ())]) for ls in label_sets]
        return {"label_set": np.array(sets, dtype=object).astype(str), "opencs_rank": rank}


@dataclass
class PairParams:
    contrastive: bool = option(True, help="true: two same-cluster samples per judge prompt (OpenCS); false: the "
                                          "'w/o contrastive score' ablation, one sample per prompt")
    pair_prompt: str = option("opencs_pair", help="prompt of the pairwise judge (0-100 per sample): packaged name "
                                                  "or YAML path")
    single_prompt: str = option("opencs_single", help="prompt of the one-sample judge (contrastive false): packaged "
                                                      "name or YAML path")
    max_tokens: int = option(512, help="tokens of each judge reply")
    temperature: float = option(0.0, help="judge sampling temperature (reference: 0 with gpt-4o)")


class OpenCSPairScorer(Scorer):
    """OpenCS contrastive scoring: two same-cluster samples per judge prompt, 0-100 each."""

    name = "opencs_pairs"
    version = "2"                       # 2: instructions and responses between <<<SAMPLE markers
    Params = PairParams
    main_column = "opencs_score"
    higher_is_better = True
    uses = ("judge",)
    scope = "dataset"
    produces = {"opencs_score": "mean 0-100 judge score over the sample's pairs; higher = better",
                "opencs_cluster_scores": "JSON {cluster id: score in that cluster's pair}",
                "pair_status": "ok | not paired | unparsed | failed: ..."}

    def required_columns(self):
        return ("label_set", "opencs_rank")

    def param_dict(self) -> dict:
        return {**super().param_dict(), "prompt_sha": prompt_sha(self.params.pair_prompt) +
                prompt_sha(self.params.single_prompt)}

    def score_batch(self, rows: Dataset, inputs=None) -> dict[str, np.ndarray]:
        p = self.params
        members = clusters_from_columns(inputs["label_set"], inputs["opencs_rank"])
        if p.contrastive:
            by_cluster = consecutive_pairs(members)
            units = unique_pairs(by_cluster)                                    # (U, 2)
        else:
            by_cluster = {c: np.asarray(m).reshape(-1, 1) for c, m in members.items()}
            units = np.unique(np.concatenate([np.asarray(m) for m in members.values()] +
                                             [np.zeros(0, np.int64)])).reshape(-1, 1)
        prompt = load_prompt(p.pair_prompt if p.contrastive else p.single_prompt)
        fields = [sample_fields(m, meta, "last") for m, meta in zip(rows.messages, rows.meta)]
        reqs = []
        for u in units.tolist():
            slots = {}
            for k, i in enumerate(u, start=1):
                slots[f"instruction_{k}"], slots[f"response_{k}"] = fields[i]["instruction"], fields[i]["response"]
            reqs.append(ChatRequest.of(prompt.render(**slots), max_tokens=p.max_tokens, temperature=p.temperature))
        results = self.ctx.judge().chat(reqs) if reqs else []
        unit_scores = np.full(units.shape, np.nan)
        n = len(rows)
        status = np.full(n, "not paired", dtype=object)
        retry: set[int] = set()                                   # rows of transiently failed pairs
        for j, (u, res) in enumerate(zip(units.tolist(), results)):
            if res.text is None:
                status[u] = f"failed: {res.error}"
                retry.update(u if res.transient else ())
                continue
            unit_scores[j] = parse_pair_scores(res.text)[: units.shape[1]]
            for i, v in zip(u, unit_scores[j]):
                status[i] = "ok" if np.isfinite(v) or status[i] == "ok" else "unparsed"
        where = {tuple(u): j for j, u in enumerate(units.tolist())}
        per_row: list[dict] = [{} for _ in range(n)]
        for cid, prs in by_cluster.items():
            for pr in np.asarray(prs).tolist():
                for i, v in zip(pr, unit_scores[where[tuple(pr)]]):
                    if np.isfinite(v):
                        per_row[i][str(cid)] = float(v)
        mean = np.array([np.mean(list(d.values())) if d else np.nan for d in per_row])
        self.transient_failures += len(retry)                    # not final: the pool is not cached
        return {"opencs_score": mean, "opencs_cluster_scores": np.array([json.dumps(d) for d in per_row]),
                "pair_status": status.astype(str)}
