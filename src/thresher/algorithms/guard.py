"""The noise guard's verdict: per row, which kinds of corruption the signal columns show, why, and how suspect.

Input: a DataFrame with one row per data row and the columns of the guard scorers (``guard_lm``,
``guard_text``, ``guard_embed``; any subset, plus ``id``). Output (``guard_verdict``), one row per input row:
  flagged          bool: some kind fired
  flags            str: the kinds that fired, ";"-joined in KINDS order ("" when none)
  reason           str: the evidence of each kind that fired, e.g. "mismatch: IFD 1.08 >= 1" ("" when none)
  suspect          float in [0, 1], higher = more suspect: the largest per-kind suspect (NaN only when no kind
                   could judge the row). ``flagged == (suspect >= 0.5)``.
  suspect_<kind>   float in [0, 1] per kind in KINDS; NaN where the kind is off, its signals were not computed,
                   or the row's signals are NaN (never a silent 0: a row nobody judged is not clean)

How a kind judges. Each kind reads one or more *sources*, one signal column each. A source turns its column
into a margin m past a threshold t, in units of the pool's robust spread s, oriented so that m >= 0 fires:
  pool sources     t from the pool itself: t = median + z_cutoff * s (or median - z_cutoff * s for a lower tail),
                   s = 1.4826 * MAD (the Iglewicz-Hoaglin modified z-score: m = z - z_cutoff); when MAD is 0,
                   1.2533 * the mean absolute deviation (their fallback); a constant column gives no evidence
  fixed sources    t has a meaning (IFD >= 1: the instruction does not help; a share of copied 3-grams; a cosine
                   of near-identical texts), s is still the pool's robust spread of the column
  hit sources      0/1 columns (refusal pattern, empty response, other language): a hit fires
A kind's suspect is the largest of its sources' ``sigmoid(m)`` (a hit: HIT_SUSPECT, a miss: 0), so 0.5 sits
exactly at the threshold and the map is monotone in the evidence. The combined ``suspect`` is the maximum over
kinds, not a noisy-OR: the corruptions are single defects that one signal shows clearly, a clean row has many
kinds each slightly above 0 by chance (a noisy-OR of ten such values would rank ordinary rows above a clearly
garbled one and break ``flagged == suspect >= 0.5``), and the maximum keeps each kind's own scale.

Missing signal columns: the sources reading them are skipped; a kind left with no source is not judged
(its suspect_<kind> is NaN) and ``attrs["not_judged"]`` says why. A pool source needs ``min_pool`` finite
values to estimate its median and spread. ``attrs["partial"]`` names the kinds judged without some source.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from thresher.config import choice, option
from thresher.errors import ConfigError

KINDS = ("mismatch", "garbled", "cutoff", "refusal", "copy", "duplicate", "repetition", "language", "empty", "junk")
HIT_SUSPECT = 0.95          # the suspect of a 0/1 signal that fired (refusal pattern, empty, other language)
MAD_SCALE = 1.4826          # 1 / Phi^-1(3/4): MAD -> standard deviation of a normal sample
MEANAD_SCALE = 1.2533       # sqrt(pi / 2): mean absolute deviation -> standard deviation (Iglewicz-Hoaglin)
VERDICT_COLUMNS = ("flagged", "flags", "reason", "suspect", *(f"suspect_{k}" for k in KINDS))


@dataclass
class GuardParams:
    """The verdict's thresholds (thresher.config fields: recipe ``guard:`` keys and `thresher guard` flags)."""
    kinds: list = option(default_factory=lambda: list(KINDS),
                         help="the kinds judged (comma-separated): " + ", ".join(KINDS))
    z_cutoff: float = option(3.5, help="robust z (Iglewicz-Hoaglin modified z on median/MAD) at which a pool "
                                       "signal fires: direct loss (garbled), end-of-turn logprob (cutoff), "
                                       "instruction-response cosine (mismatch), compression ratio (repetition), "
                                       "junk tail and tail loss (junk); 3.5 is their recommended outlier cutoff")
    ifd_threshold: float = option(1.0, help="mismatch: IFD (exp(loss_cond - loss_direct)) at or above which the "
                                            "instruction does not help predict the response (1 by its meaning, "
                                            "as Cherry and Superfiltering)")
    mismatch_qa_z: float = option(1.0, help="mismatch: IFD >= ifd_threshold fires only where the instruction-"
                                            "response cosine agrees, i.e. sits at least this many robust-z units "
                                            "below the pool's median (the margin is the smaller of the two); IFD "
                                            "alone flagged greetings and short answers on real ShareGPT (1.0, "
                                            "set on a ShareGPT tuning slice: clean rows flagged 22 -> 18 %; "
                                            "without qa_cosine, IFD judges alone)")
    copy_cutoff: float = option(0.8, help="copy: share of the response's word 3-grams found in the instruction "
                                          "at or above which the response is a copy (0.8: four fifths copied)")
    copy_cosine: float = option(0.98, help="copy: instruction-response embedding cosine at or above which the "
                                           "two texts are the same (a backup when the instruction is too short "
                                           "for 3-grams)")
    dup_cutoff: float = option(0.95, help="duplicate: cosine to another row's response at or above which two "
                                          "responses are near-identical (with MinHash, embeddings off, a Jaccard "
                                          "of 0.8 is the usual bar); of a pair, the copy less related to its own "
                                          "instruction (lower qa_cosine; else the later row) is flagged")
    repeat_cutoff: float = option(0.5, help="repetition: share of the response's word 4-grams that repeat an "
                                            "earlier one at or above which it is a loop (0.5: half)")
    script_cutoff: float = option(0.5, help="language: script mismatch (1 - overlap of the Unicode-script "
                                            "histograms of instruction and response) at or above which the "
                                            "response is in another script (0.5: most letters)")
    eot_rule: str = choice("pool", "pool", "absolute", "off",
                           help="cutoff: how eot_logprob (log-probability of ending the turn after the response) "
                                "fires: pool (robust z below -z_cutoff), absolute (below eot_min_logprob), or off "
                                "(sentence cues only)")
    eot_min_logprob: float = option(-4.0, help="cutoff with eot_rule absolute: the eot_logprob (nats) below which "
                                               "the response is cut off (-4: the model gives ending < 2 %)")
    unfinished_weight: float = option(1.5, help="cutoff: robust-z units of evidence a response that does not end "
                                                "like a finished answer (ends_cleanly 0) adds to its eot_logprob "
                                                "evidence (alone it never fires: 1.5 < z_cutoff)")
    min_pool: int = option(20, help="a pool signal (median/MAD) is judged only with at least this many finite "
                                    "values; fewer: its kind is not judged from it")

    def check(self, owner: str) -> None:
        bad = [k for k in self.kinds if k not in KINDS]
        if bad:
            raise ConfigError(f"The 'kinds' parameter of {owner} must list kinds among {', '.join(KINDS)}. "
                              f"Got {', '.join(map(repr, bad))}.")
        for name in ("copy_cutoff", "copy_cosine", "dup_cutoff", "repeat_cutoff", "script_cutoff"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"The {name!r} parameter of {owner} must be a float in (0, 1]. Got {value!r}.")
        if self.z_cutoff <= 0 or self.ifd_threshold <= 0:
            raise ConfigError(f"The 'z_cutoff' and 'ifd_threshold' parameters of {owner} must be floats > 0. "
                              f"Got {self.z_cutoff!r} and {self.ifd_threshold!r}.")
        if self.unfinished_weight < 0 or self.min_pool < 3:
            raise ConfigError(f"The 'unfinished_weight' parameter of {owner} must be >= 0 and 'min_pool' >= 3. "
                              f"Got {self.unfinished_weight!r} and {self.min_pool!r}.")


@dataclass
class Evidence:
    """One source's judgement of every row: ``margin`` (N,) float64 (>= 0 fires; NaN: not judged for the row),
    ``suspect`` (N,) in [0, 1] or NaN, and its reason: ``rule`` the evidence as a format string ("IFD {v} >= 1";
    {v}: the row's entry of ``values`` (N,), {z}: of ``z`` (N,), the robust z of a pool source)."""
    margin: np.ndarray
    suspect: np.ndarray
    values: np.ndarray
    rule: str
    z: np.ndarray | None = None


@dataclass
class KindEvidence:
    """What ``kind_evidence`` found for one kind: its sources' evidence, and the columns it missed."""
    sources: list = field(default_factory=list)
    missing: list = field(default_factory=list)     # "column: why"


# ------------------------------------------------------------------------------------ robust statistics
def robust_center_scale(x: np.ndarray, min_pool: int) -> tuple[float, float] | None:
    """(median, robust standard deviation) of the finite values of ``x``: 1.4826 * MAD, or 1.2533 * the mean
    absolute deviation when MAD is 0 (Iglewicz & Hoaglin); None with fewer than ``min_pool`` finite values."""
    v = x[np.isfinite(x)]
    if v.size < min_pool:
        return None
    med = float(np.median(v))
    dev = np.abs(v - med)
    mad = float(np.median(dev))
    return med, (MAD_SCALE * mad if mad > 0 else MEANAD_SCALE * float(dev.mean()))


def robust_z(x: np.ndarray, center: float, scale: float) -> np.ndarray:
    """(N,) (x - center) / scale; 0 where x equals the center, +-inf past it when scale is 0 (a constant pool:
    any other value is infinitely far out), NaN where x is NaN."""
    d = x - center
    with np.errstate(divide="ignore", invalid="ignore"):
        z = d / scale if scale > 0 else np.sign(d) * np.inf
    return np.where(d == 0, 0.0, z)


def sigmoid(m: np.ndarray) -> np.ndarray:
    """(N,) 1 / (1 + exp(-m)) in [0, 1]; NaN stays NaN."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-m))


# ------------------------------------------------------------------------------------ sources
def pool_source(x: np.ndarray, p: GuardParams, *, upper: bool, label: str, extra: np.ndarray | None = None):
    """Evidence from the pool's robust z of ``x`` in the ``upper`` (or lower) tail: m = |z| past z_cutoff
    (``extra``: (N,) z units added to the evidence); None when the pool is too small."""
    stats = robust_center_scale(x, p.min_pool)
    if stats is None:
        return None
    z = robust_z(x, *stats)
    evidence = (z if upper else -z) + (0.0 if extra is None else extra)
    margin = evidence - p.z_cutoff
    sign = ">=" if upper else "<="
    rule = f"{label} {{v}}, z {{z}} {sign} {'' if upper else '-'}{p.z_cutoff:g}"
    return Evidence(margin, sigmoid(margin), x, rule, z)


def fixed_source(x: np.ndarray, threshold: float, p: GuardParams, *, label: str):
    """Evidence of ``x >= threshold`` (a threshold with a meaning), the margin in units of the pool's robust
    spread of ``x`` (a pool too small or constant for a spread: +-inf, i.e. suspect 1 or 0)."""
    stats = robust_center_scale(x, 1)
    scale = stats[1] if stats is not None else 0.0
    margin = robust_z(x, threshold, scale)
    margin = np.where(x == threshold, 0.0, margin)
    return Evidence(margin, sigmoid(margin), x, f"{label} {{v}} >= {threshold:g}")


def hit_source(x: np.ndarray, label: str) -> Evidence:
    """Evidence of a 0/1 signal: 1 fires (suspect HIT_SUSPECT), 0 does not (suspect 0), NaN is not judged."""
    hit = x >= 0.5
    margin = np.where(np.isnan(x), np.nan, np.where(hit, 1.0, -1.0))
    suspect = np.where(np.isnan(x), np.nan, np.where(hit, HIT_SUSPECT, 0.0))
    return Evidence(margin, suspect, x, label)


def _col(columns: pd.DataFrame, name: str) -> np.ndarray | None:
    return columns[name].to_numpy(dtype=np.float64, na_value=np.nan) if name in columns.columns else None


# ------------------------------------------------------------------------------------ kinds
def kind_evidence(kind: str, columns: pd.DataFrame, p: GuardParams) -> KindEvidence:
    """The sources of ``kind`` that ``columns`` allows (see the module docstring)."""
    v = KindEvidence()
    for column, make in _SOURCES[kind]:
        x = _col(columns, column)
        if x is None:
            v.missing.append(f"{column}: signal not computed")
            continue
        ev = make(x, columns, p)
        if ev is None:
            v.missing.append(f"{column}: fewer than min_pool={p.min_pool} finite values")
        elif ev is not False:
            v.sources.append(ev)
    return v


def _cutoff_eot(x, columns, p: GuardParams):
    if p.eot_rule == "off":
        return False
    ends = _col(columns, "ends_cleanly")
    extra = None if ends is None else np.where(ends < 0.5, p.unfinished_weight, 0.0)
    if p.eot_rule == "pool":
        return pool_source(x, p, upper=False, label="end-of-turn logprob", extra=extra)
    ev = fixed_source(-x, -p.eot_min_logprob, p, label="end-of-turn logprob")
    if extra is not None:
        ev.margin = ev.margin + extra
        ev.suspect = sigmoid(ev.margin)
    ev.values, ev.rule = x, f"end-of-turn logprob {{v}} <= {p.eot_min_logprob:g}"
    return ev


def _mismatch_ifd(x, columns, p: GuardParams) -> Evidence:
    """IFD >= ifd_threshold where qa_cosine agrees (robust z <= -mismatch_qa_z): margin = min(IFD margin,
    -z_qa - mismatch_qa_z); IFD alone on rows (or pools) without a qa_cosine."""
    ev = fixed_source(x, p.ifd_threshold, p, label="IFD")
    qa = _col(columns, "qa_cosine")
    stats = None if qa is None else robust_center_scale(qa, p.min_pool)
    if stats is None:
        return ev
    agree = -robust_z(qa, *stats) - p.mismatch_qa_z
    ev.margin = np.where(np.isnan(agree), ev.margin, np.minimum(ev.margin, agree))
    ev.suspect = sigmoid(ev.margin)
    ev.rule = f"IFD {{v}} >= {p.ifd_threshold:g} with a low instruction-response cosine"
    return ev


def _duplicate(x, columns, p: GuardParams) -> Evidence:
    """dup_cosine >= dup_cutoff, for the worse copy of each pair only: the one less related to its own
    instruction (lower qa_cosine), else the later row; a partner not found in ``columns`` (no dup_of, or an id
    outside the table): the row is flagged."""
    ev = fixed_source(x, p.dup_cutoff, p, label="cosine to another response")
    partner = _partner(columns)
    if partner is None:
        return ev
    n = len(x)
    rows = np.arange(n)
    found = partner >= 0
    safe = np.where(found, partner, 0)
    qa = _col(columns, "qa_cosine")
    if qa is None:
        worse = rows > safe
    else:
        mine, theirs = np.nan_to_num(qa, nan=-np.inf), np.nan_to_num(qa[safe], nan=-np.inf)
        worse = (mine < theirs) | ((mine == theirs) & (rows > safe))
    kept_copy = found & ~worse & (ev.margin >= 0)
    ev.margin = np.where(kept_copy, -np.inf, ev.margin)
    ev.suspect = np.where(kept_copy, 0.0, ev.suspect)
    return ev


def _partner(columns: pd.DataFrame) -> np.ndarray | None:
    """(N,) int64 row position of each row's dup_of id (-1: not in the table); None without id / dup_of."""
    if "dup_of" not in columns.columns or "id" not in columns.columns:
        return None
    ids = pd.Index(columns["id"].astype(str))
    dup = columns["dup_of"].astype("string").fillna("\x00").astype(str)
    return ids.get_indexer(dup) if ids.is_unique else None


_SOURCES = {
    "mismatch": [("ifd", _mismatch_ifd),
                 ("qa_cosine", lambda x, c, p: pool_source(x, p, upper=False, label="instruction-response cosine"))],
    "garbled": [("loss_direct", lambda x, c, p: pool_source(x, p, upper=True, label="direct loss"))],
    "cutoff": [("eot_logprob", _cutoff_eot)],
    "refusal": [("refusal", lambda x, c, p: hit_source(x, "refusal pattern"))],
    "copy": [("copy_overlap", lambda x, c, p: fixed_source(x, p.copy_cutoff, p, label="copied 3-grams")),
             ("qa_cosine", lambda x, c, p: fixed_source(x, p.copy_cosine, p, label="instruction-response cosine"))],
    "duplicate": [("dup_cosine", _duplicate)],
    "repetition": [("repeat_ngram", lambda x, c, p: fixed_source(x, p.repeat_cutoff, p,
                                                                 label="repeated 4-grams")),
                   ("compression_ratio", lambda x, c, p: pool_source(x, p, upper=False,
                                                                     label="compression ratio"))],
    "language": [("script_mismatch", lambda x, c, p: fixed_source(x, p.script_cutoff, p, label="script mismatch")),
                 ("lang_mismatch", lambda x, c, p: hit_source(x, "other language"))],
    "empty": [("empty", lambda x, c, p: hit_source(x, "empty or boilerplate"))],
    "junk": [("junk_tail", lambda x, c, p: pool_source(x, p, upper=True, label="junk tail")),
             ("tail_loss", lambda x, c, p: pool_source(x, p, upper=True, label="tail loss"))],
}


# ------------------------------------------------------------------------------------ the verdict
def guard_verdict(columns: pd.DataFrame, params: GuardParams | None = None) -> pd.DataFrame:
    """The verdict over the signal columns ``columns`` (N rows; see the module docstring): a DataFrame of
    VERDICT_COLUMNS with ``columns``' index, and ``attrs`` ``not_judged`` {kind: why} and ``partial``
    {kind: [the columns it was judged without]}."""
    p = params or GuardParams()
    n = len(columns)
    out: dict[str, np.ndarray] = {}
    fired: dict[str, np.ndarray] = {}
    reasons: dict[str, list] = {}
    not_judged: dict[str, str] = {}
    partial: dict[str, list] = {}
    for kind in KINDS:
        if kind not in p.kinds:
            out[f"suspect_{kind}"] = np.full(n, np.nan)
            not_judged[kind] = "turned off (kinds)"
            continue
        v = kind_evidence(kind, columns, p)
        if not v.sources:
            out[f"suspect_{kind}"] = np.full(n, np.nan)
            not_judged[kind] = "; ".join(v.missing)
            continue
        if v.missing:
            partial[kind] = v.missing
        with np.errstate(invalid="ignore"):
            out[f"suspect_{kind}"] = np.fmax.reduce([ev.suspect for ev in v.sources])
            fired[kind] = np.logical_or.reduce([ev.margin >= 0 for ev in v.sources])
        reasons[kind] = v.sources
    suspects = np.column_stack([out[f"suspect_{k}"] for k in KINDS])
    judged = ~np.isnan(suspects).all(axis=1)
    suspect = np.where(judged, np.nanmax(np.where(judged[:, None], suspects, 0.0), axis=1), np.nan)
    flags, reason = _flag_text(n, fired, reasons)
    frame = pd.DataFrame({"flagged": flags != "", "flags": flags, "reason": reason, "suspect": suspect, **out},
                         index=columns.index)
    frame.attrs.update(not_judged=not_judged, partial=partial)
    return frame


def _flag_text(n: int, fired: dict, reasons: dict) -> tuple[np.ndarray, np.ndarray]:
    """(N,) ``flags`` and ``reason`` strings: for each kind that fired on a row, its name and the evidence of
    each of its sources that fired (formatted for the fired rows only)."""
    flags = np.full(n, "", dtype=object)
    reason = np.full(n, "", dtype=object)
    for kind in KINDS:
        if kind not in fired:
            continue
        rows = np.flatnonzero(fired[kind])
        if not rows.size:
            continue
        parts = np.full(rows.size, "", dtype=object)
        for ev in reasons[kind]:
            hit = ev.margin[rows] >= 0
            text = np.array([_rule_text(ev, r) for r in rows[hit]], dtype=object)
            parts[hit] = np.where(parts[hit] == "", text, parts[hit] + ", " + text)
        flags[rows] = np.where(flags[rows] == "", kind, flags[rows] + ";" + kind)
        entry = kind + ": " + parts
        reason[rows] = np.where(reason[rows] == "", entry, reason[rows] + "; " + entry)
    return flags, reason


def _rule_text(ev: Evidence, row: int) -> str:
    z = "" if ev.z is None else f"{ev.z[row]:.1f}"
    return ev.rule.format(v=_num(ev.values[row]), z=z)


def _num(x: float) -> str:
    return f"{x:.3g}"


# ------------------------------------------------------------------------------------ the summary
def guard_summary(verdict: pd.DataFrame, ids, examples: int = 5) -> dict:
    """The ``guard`` block of a summary: rows, flagged, by_kind {kind: rows flagged}, examples {kind: up to
    ``examples`` ids, the most suspect first}, not_judged {kind: why} and partial {kind: [columns]} (from
    ``verdict.attrs``). ``ids``: (N,) the rows' ids, in ``verdict``'s row order."""
    ids = np.asarray(list(ids), dtype=object)
    flags = ";" + verdict["flags"].astype(str).reset_index(drop=True) + ";"
    by_kind, shown = {}, {}
    for kind in KINDS:
        hit = np.flatnonzero(flags.str.contains(f";{kind};", regex=False).to_numpy())
        if not hit.size:
            continue
        order = np.argsort(-verdict[f"suspect_{kind}"].to_numpy(dtype=np.float64)[hit], kind="stable")
        by_kind[kind] = int(hit.size)
        shown[kind] = [str(i) for i in ids[hit[order[:examples]]]]
    return {"rows": int(len(verdict)), "flagged": int(verdict["flagged"].sum()), "by_kind": by_kind,
            "examples": shown, "not_judged": dict(verdict.attrs.get("not_judged", {})),
            "partial": dict(verdict.attrs.get("partial", {}))}
