"""LLM-judge ratings: AlpaGasus (0-5), DS2 (four 1-10 ratings, overall compressed to 0-5), DEITA
complexity and quality (1-6), or any user prompt file (METHODS.md 2.2, 6.1, 6.2).

The judge is the run's chat backend (``ModelContext.judge()``: local model, OpenAI-compatible API or
vLLM). Two modes:
  generate  the judge writes an answer, which the prompt's parser reads. An answer that cannot be read
            is NaN with status "unparsed" (counted in the summary); ``on_unparsed: zero`` reproduces
            DS2's faithful behaviour (a failed rating becomes the lowest class). A request that fails
            outright (retries exhausted) is NaN with status "failed: ..."; when the failure is transient
            (API: network, 5xx, timeouts) the row counts in ``transient_failures``, so its shard is not
            cached and a rerun asks again.
  logits    one forward pass reads the next-token distribution over the prompt's labels (e.g. "0".."5"):
            ``rating`` = expected score, ``rating_argmax``, ``label_mass`` = probability the model put on
            the labels at all. Deterministic; local judges only. For DS2 the answer is primed with
            '{"Overall rating": ' and the most probable of "1".."9" is compressed (a leading "1" also
            stands for 10, which the compression would map to 5: a small, documented ambiguity).
  auto      (default) logits when the judge is local and the prompt has labels, else generate.
Columns: ``rating`` (main; higher = better; DS2: the compressed 0-5 class), ``judge_text``, ``status``, and
for DS2 ``rarity``, ``complexity``, ``informativeness``, ``overall`` (1-10).
With an API judge the engine scores several shards at once (``api_shards_in_flight``), so that the judge's
``concurrency`` requests stay in flight across shard boundaries; ``score_batch`` writes only this scorer's
own counters and the backend's thread-safe state, so shallow copies of a scorer may run it concurrently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thresher.algorithms.ds2_curation import ds2_compress
from thresher.config import choice, option
from thresher.data import TURNS, split_turns
from thresher.data.table import Dataset
from thresher.data.templates import instruction_and_input
from thresher.errors import ConfigError
from thresher.models.chat import ChatRequest
from thresher.models.context import ModelContext
from thresher.models.judges import describe as describe_judge
from thresher.scoring.base import Scorer
from thresher.scoring.prompts import load_prompt, parse_ds2, parse_first_number, prompt_sha


MAX_SHARDS_IN_FLIGHT = 64


def api_shards_in_flight(ctx: ModelContext | None, shard_size: int) -> int:
    """Shards to score at once in this process for a judge scorer: ceil(2 * concurrency / shard_size) + 1
    (at most MAX_SHARDS_IN_FLIGHT) when the context's judge is an API (``kind: api``); 1 for local and
    vLLM judges, which batch on one device. ``shard_size``: rows per shard, >= 1.

    While the oldest shard waits for its slowest answer, the others must hold at least ``concurrency``
    requests that are not answered yet. Replies vary in time, so some of theirs are answered first: one
    ``concurrency`` of slack (ceil(concurrency / shard_size) + 1 shards) measured 0.83-0.87 of
    concurrency / latency at 64-row shards and concurrency 64 with latencies spread +-50 %, two measured
    0.93 (benchmarks/judge_queue.py)."""
    judge = describe_judge(ctx.judge_spec) if ctx is not None else {"kind": None}
    if judge["kind"] != "api":
        return 1
    return min(MAX_SHARDS_IN_FLIGHT, -(-2 * judge["concurrency"] // max(int(shard_size), 1)) + 1)


@dataclass
class JudgeParams:
    prompt: str = option("alpagasus", help="packaged prompt name or a path to a YAML prompt file")
    mode: str = choice("auto", "auto", "generate", "logits",
                       help="auto: logits on a local judge when the prompt has labels, else generate")
    max_tokens: int = option(128, help="tokens of each judge reply")
    temperature: float = option(0.0, help="judge sampling temperature (DS2's open-model rating sampled at 1.2; "
                                          "0 = reproducible)")
    top_p: float = option(1.0, help="judge nucleus sampling")
    seed: int | None = option(None, help="judge sampling seed")
    on_unparsed: str = choice("nan", "nan", "zero", help="score of a reply with no rating in it")
    turns: str = choice("last", *TURNS, help="which assistant turns are rated (all: every turn, DEITA multi-turn)")
    dimension: str = option("accuracy", help="the rated dimension (AlpaGasus)")
    prefix: str = option("", help="column name prefix, for two judges in one stage (DEITA: complexity_, quality_)")

    def check(self, owner):
        p = load_prompt(self.prompt)
        if self.mode == "logits" and not p.labels:
            raise ConfigError(f"{owner}: mode 'logits' needs a prompt with 'labels' (one token each); prompt "
                              f"{p.name!r} has none. Use mode: generate.")
        if p.parser in ("pair", "tags"):
            raise ConfigError(f"{owner}: prompt {p.name!r} is a {p.parser!r} prompt; the judge scorer rates single "
                              "samples (use the opencs scorers for tags and pairs).")
        if self.max_tokens < 1:
            raise ConfigError(f"The 'max_tokens' parameter of {owner} must be an int >= 1. Got {self.max_tokens}.")


def unit_fields(messages: list[dict], meta: dict, turns: str) -> list[dict]:
    """Prompt slots (instruction, input, response, conversation) of each rated turn of one row."""

    out = []
    for context, response in split_turns(messages, turns):
        ins, inp = instruction_and_input(context, meta)
        shown = context + [{"role": "assistant", "content": response}]
        conversation = "".join(f"### {m['role']}: {m['content']}\n" for m in shown)
        out.append({"instruction": ins, "input": inp, "response": response, "conversation": conversation})
    return out


def sample_fields(messages: list[dict], meta: dict, turns: str) -> dict | None:
    """The slots of the one rated turn ("first" or "last"); None for a row without a response."""
    units = unit_fields(messages, meta, turns)
    return units[0] if units else None


def _to_rows(cols: dict, owner: np.ndarray, n_rows: int) -> dict:
    """Unit columns -> row columns: the mean of numeric columns over a row's turns (its per-turn
    ratings kept as ``rating_turns``), texts joined, the first non-ok status."""
    out = {}
    for k, v in cols.items():
        if v.dtype == object:
            vals = [[] for _ in range(n_rows)]
            for r, x in zip(owner, v):
                vals[r].append(str(x))
            if k == "status":
                out[k] = np.array([next((x for x in xs if x != "ok"), "ok") if xs else "no response to rate"
                                   for xs in vals], dtype=object).astype(str)
            else:
                out[k] = np.array(["\n---\n".join(xs) for xs in vals], dtype=object).astype(str)
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                tot = np.bincount(owner, weights=v, minlength=n_rows)
                cnt = np.bincount(owner, minlength=n_rows)
                out[k] = np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)
    out["rating_turns"] = [cols["rating"][owner == r].astype(np.float64) for r in range(n_rows)]
    return out


class JudgeRatingScorer(Scorer):
    """LLM-judge rating of each sample (AlpaGasus, DS2, DEITA prompts or your own)."""

    name = "judge"
    version = "2"                       # 2: sample slots between <<<SAMPLE markers; DS2 reads the judge's own object
    Params = JudgeParams
    main_column = "rating"
    higher_is_better = True
    uses = ("judge",)
    produces = {"rating": "the judge's score (prompt's scale; DS2: compressed 0-5); NaN = unreadable",
                "judge_text": "the judge's answer (generate mode)", "status": "ok | unparsed | failed: ...",
                "rating_argmax": "logits mode: most probable label", "label_mass": "logits mode: P(any label)",
                "rarity": "DS2 1-10", "complexity": "DS2 1-10", "informativeness": "DS2 1-10",
                "overall": "DS2 overall 1-10 before compression",
                "rating_turns": "turns: all: the rating of each assistant turn (rating = their mean)"}

    def __init__(self, **params):
        super().__init__(**params)
        self.main_column = self.params.prefix + "rating"

    def produced_columns(self):
        return tuple(self.params.prefix + c for c in self.produces)

    def param_dict(self) -> dict:
        # The prompt file's content is part of the cache key: editing a prompt re-rates.
        return {**super().param_dict(), "prompt_sha": prompt_sha(self.params.prompt)}

    def setup(self, ctx: ModelContext) -> None:
        super().setup(ctx)
        ctx.judge()                             # built here, once: shards scored at once share it

    def shards_in_flight(self, shard_size: int) -> int:
        return api_shards_in_flight(self.ctx, shard_size)

    def judge_prompts(self, rows: Dataset, ctx: ModelContext) -> tuple[list[list[dict]], int]:
        """(the chat messages of each rated unit of ``rows``, as ``score_batch`` renders them with the judge of
        ``ctx``; the reply tokens each may take at most: 0 when the ratings come from one forward pass (logits
        mode)). Loads nothing."""
        p = self.params
        prompt = load_prompt(p.prompt)
        msgs = [prompt.render(**f, dimension=p.dimension)
                for m, meta in zip(rows.messages, rows.meta) for f in unit_fields(m, meta, p.turns)]
        logits = p.mode == "logits" or (p.mode == "auto" and prompt.labels
                                        and describe_judge(ctx.judge_spec)["kind"] == "local")
        return msgs, 0 if logits else p.max_tokens

    def score_batch(self, rows: Dataset) -> dict[str, np.ndarray]:
        p = self.params
        fields, owner = [], []
        for r, (m, meta) in enumerate(zip(rows.messages, rows.meta)):
            for f in unit_fields(m, meta, p.turns):
                fields.append(f)
                owner.append(r)
        cols, transient = self._score(fields)
        self.transient_failures += len(set(np.asarray(owner, dtype=np.int64)[transient].tolist()))
        if p.turns == "all":
            cols = _to_rows(cols, np.asarray(owner, dtype=np.int64), len(rows))
        else:                                   # one unit per row that has a response
            full = {}
            for k, v in cols.items():
                empty = "no response to rate" if k == "status" else ("" if v.dtype == object else np.nan)
                col = np.full(len(rows), empty, dtype=v.dtype)
                col[np.asarray(owner, dtype=np.int64)] = v
                full[k] = col.astype(str) if v.dtype == object else col
            cols = full
        return {p.prefix + k: v for k, v in cols.items()}

    def _score(self, fields: list[dict]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Columns over rated units (one per row, or one per turn with turns: all), and a bool mask of the
        units whose request failed transiently."""
        p = self.params
        prompt = load_prompt(p.prompt)
        msgs = [prompt.render(**f, dimension=p.dimension) for f in fields]
        n = len(fields)
        status = np.full(n, "", dtype=object)        # every unit gets ok | unparsed | failed: ... below
        judge = self.ctx.judge()
        transient = np.zeros(n, dtype=bool)
        if p.mode == "logits" or (p.mode == "auto" and prompt.labels and hasattr(judge, "rate")):
            return self._logits(judge, prompt, msgs, status), transient    # local: failures are final
        reqs = [ChatRequest.of(m, max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p, seed=p.seed)
                for m in msgs]
        results = judge.chat(reqs) if reqs else []
        texts = np.full(n, "", dtype=object)
        cols = {k: np.full(n, np.nan) for k in ("rating", "rarity", "complexity", "informativeness", "overall")}
        for i, res in enumerate(results):
            if res.text is None:
                status[i] = f"failed: {res.error}"
                transient[i] = res.transient
                continue
            texts[i] = res.text
            self.tokens_processed += res.prompt_tokens + res.completion_tokens
            if prompt.parser == "ds2_json":
                r, c, inf, overall = parse_ds2(res.text)
                cols["rarity"][i], cols["complexity"][i], cols["informativeness"][i] = r, c, inf
                cols["overall"][i] = overall
                value = overall
            else:
                value = parse_first_number(res.text, prompt.scale)
            status[i] = "ok" if np.isfinite(value) else "unparsed"
            cols["rating"][i] = value
        if prompt.parser == "ds2_json":
            cols["rating"] = ds2_compress(cols["overall"], failed=p.on_unparsed)
        elif p.on_unparsed == "zero":
            bad = (status == "unparsed")
            cols["rating"][bad] = prompt.scale[0] if prompt.scale else 0.0
        out = {"rating": cols["rating"], "judge_text": texts, "status": status}
        if prompt.parser == "ds2_json":
            out.update({k: cols[k] for k in ("rarity", "complexity", "informativeness", "overall")})
        return out, transient

    def _logits(self, judge, prompt, msgs, status):
        if not hasattr(judge, "rate"):
            raise ConfigError(f"Judge scorer mode 'logits' needs a local judge that exposes next-token "
                              f"probabilities; the configured judge ({judge.identity()}) returns text only. "
                              "Use mode: generate, or judge kind: local.")
        rating, argmax, mass = (np.full(len(msgs), np.nan) for _ in range(3))
        if msgs:
            reqs = [ChatRequest.of(m, max_tokens=1) for m in msgs]
            res = judge.rate(reqs, list(prompt.labels), answer_prefix=prompt.answer_prefix)
            rating[:], argmax[:], mass[:] = res["expected"], res["argmax"], res["mass"]
            errors = res.get("error") or [None] * len(msgs)
            status[:] = ["ok" if e is None else f"failed: {e}" for e in errors]
        out = {"rating": rating, "rating_argmax": argmax, "label_mass": mass, "status": status}
        if prompt.parser == "ds2_json":
            # DS2 needs integer classes: the most probable overall rating, compressed to 0-5.
            out["overall"] = argmax
            out["rating"] = ds2_compress(argmax, failed=self.params.on_unparsed)
        return out
