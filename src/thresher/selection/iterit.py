"""IterIT's ranking (METHODS.md 4.4): IFD complexity times response TF-IDF diversity, greedy with decay.

``tfidf_greedy`` ranks one scoring window; ``window_order`` turns that ranking into the pool's next
ordering (IterIT trains on the first ``k`` positions of the ordering each epoch, and re-scores a window
of its first positions after each epoch: ``thresher.training.iterit``).

Scores are IterIT's complexity S = PPL(A|Q) / PPL(A) (the IFD ppl ratio, >= 0, typically 0.3-1.5):
higher = the instruction helps less = harder; S >= ``threshold`` (1.0) means the instruction does not
help at all, and such rows are never candidates. NaN = no score: never a candidate either.

Differences from the reference (``JiaQiSJTU/IterIT:src/data_utils.py``, ``SupervisedDataset.update``),
each on purpose:
* scores stay float64 (the reference stores them in bfloat16: ~3 significant digits, many ties);
* the greedy loop never picks a row twice. The reference keeps taking ``argmax`` after every gain has
  reached zero (|C| < k, or decay 0 zeroing every shared term), which returns an already-picked row
  and duplicates it in the dataset (METHODS.md 4.7.4). Here the greedy stops when no unpicked
  candidate has a positive S * div, and the remaining candidates follow in score order, as the
  reference does after its greedy part;
* ties sort stably (lower window position first); the reference's ``torch.argsort`` is not stable;
* NaN-scored rows are set aside with the S >= threshold rows (the reference's ``< 1`` / ``>= 1`` masks
  both miss NaN, so such rows silently left the dataset).
"""

from __future__ import annotations

import numpy as np

from thresher.checks import check_choice, check_real, float_array, is_int, is_real, param_error
from thresher.errors import ConfigError

SCORE_TYPES = ("BOTH", "IFD")
PLACEMENTS = ("faithful", "window_end")

# A row's running diversity is recomputed exactly once it has fallen below this fraction of its value
# at the last exact computation: bounds the cancellation error of the incremental updates.
_RECOMPUTE_BELOW = 1e-3


def tfidf_greedy(scores, responses, *, k, decay=0.1, ngram_range=(1, 3), score_type="BOTH",
                 threshold=1.0, eos="") -> np.ndarray:
    """IterIT's ranking of one window: positions (int64) of the candidates, best first.

    Candidates C are the positions with ``scores < threshold`` (NaN never); the others are *not*
    in the result (``window_order`` places them). ``score_type``:

    * "IFD": C by score descending (ties: lower position first).
    * "BOTH": a ``TfidfVectorizer(ngram_range)`` (scikit-learn defaults: lowercase, word tokens of
      >= 2 characters, smooth idf, rows L2-normalised) is fitted on the candidates' ``response + eos``
      (IterIT appends the tokenizer's eos string). X is |C| x V. Greedy, at most ``k`` picks:
      div_i = sum_t X[i, t]; pick i* = argmax over unpicked i of S_i * div_i (ties: lower position);
      every column t with X[i*, t] != 0 is multiplied by ``decay``. Stops early when no unpicked
      candidate has S_i * div_i > 0. Then the unpicked candidates follow by score descending.

    ``decay`` in [0, 1]: 0.1 for general instruction data, 0.0 for domain data (IterIT's scripts);
    1 disables the diversity decay.

    Cost: the fit is linear in the candidates' n-grams. Each pick costs O(|C| + sum over the picked
    row's terms t of nnz(X[:, t])): X is kept fixed (CSC) with one weight per column (w_t =
    decay ** times t was decayed), and div is updated by the touched columns only (plus an exact
    recompute of a row, O(nnz(row)), whenever its div has dropped below 1e-3 of its last exact value,
    which keeps it exact where the reference's full re-summation gives 0). Memory O(nnz(X) + V + |C|).
    The reference re-sums all of X per pick: O(k * nnz(X)).
    """
    f = "tfidf_greedy"
    s = float_array(f, "scores", scores)
    docs = _responses(f, responses, len(s))
    check_ranking_params(f, k, decay, ngram_range, score_type, threshold, eos)
    cand = np.flatnonzero(s < threshold)                     # (C,) window positions, ascending; NaN out
    by_score = cand[np.argsort(-s[cand], kind="stable")]     # (C,) score descending, stable
    if score_type == "IFD" or k == 0 or cand.size == 0:
        return by_score.astype(np.int64, copy=False)
    picked = cand[_greedy(s[cand], [docs[i] + eos for i in cand], int(k), float(decay),
                          tuple(int(n) for n in ngram_range))]
    rest = by_score[~np.isin(by_score, picked)]
    return np.concatenate([picked, rest]).astype(np.int64, copy=False)


def window_order(prev_order, window_scores, window_responses, *, k, decay=0.1, ngram_range=(1, 3),
                 score_type="BOTH", threshold=1.0, eos="", placement="faithful") -> np.ndarray:
    """The pool's next ordering after ranking its first ``W = len(window_scores)`` positions.

    ``prev_order`` (N,) is the current ordering (row ids, position 0 first); ``window_scores`` and
    ``window_responses`` belong to ``prev_order[:W]``, position by position. With R = the ranked
    candidates (``tfidf_greedy``) and A = the set-aside positions (score >= threshold or NaN, in window
    order), the window becomes, by ``placement``:

    * "faithful" (IterIT): R[:k] + A + R[k:];
    * "window_end": R[:k] + R[k:] + A.

    Positions beyond the window keep their order. Default "faithful", because the reference's choice is
    defensible rather than a bug: the set-aside rows stay near the top, get re-scored with the updated
    model and can come back once their S falls below the threshold. Its cost (METHODS.md 4.7.3) shows
    at the full-pool window of epoch 0: when |A| >= (update_ratio - 1) * k, the next window holds the
    k rows just trained plus set-aside rows only. "window_end" sends A to the end of the pool there,
    so the next window is filled with the next-best candidates. With a constant window (every later
    epoch) both give the same window *set* next time, as any reordering inside the window does.
    """
    f = "window_order"
    order = np.asarray(prev_order)
    if order.ndim != 1 or not (order.size == 0 or np.issubdtype(order.dtype, np.integer)):
        raise ConfigError(f"The 'prev_order' parameter of {f} must be a 1-D array of ints. "
                          f"Got an array of dtype {order.dtype} and shape {order.shape}.")
    s = float_array(f, "window_scores", window_scores)
    if len(s) > len(order):
        raise ConfigError(f"{f} got {len(s)} window scores for an ordering of {len(order)} rows; the "
                          "window is the first positions of the ordering and cannot be longer.")
    check_choice(f, "placement", placement, PLACEMENTS)
    ranked = tfidf_greedy(s, window_responses, k=k, decay=decay, ngram_range=ngram_range,
                          score_type=score_type, threshold=threshold, eos=eos)
    aside = np.flatnonzero(~(s < threshold))                 # score >= threshold or NaN, window order
    kk = int(k)
    parts = ((ranked[:kk], aside, ranked[kk:]) if placement == "faithful"
             else (ranked[:kk], ranked[kk:], aside))
    window = np.concatenate(parts).astype(np.int64)          # (W,) a permutation of range(W)
    return np.concatenate([order[:len(s)][window], order[len(s):]]).astype(np.int64, copy=False)


# ---------------------------------------------------------------------------------------------


def _greedy(S: np.ndarray, docs: list[str], k: int, decay: float, ngram_range: tuple) -> np.ndarray:
    """Positions into ``S`` picked by the greedy loop, in pick order (see ``tfidf_greedy``)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        X = TfidfVectorizer(ngram_range=ngram_range).fit_transform(docs)      # (C, V) float64 CSR
    except ValueError:          # empty vocabulary: no candidate response has a word of >= 2 chars
        return np.zeros(0, dtype=np.int64)
    csr = X.tocsr()
    csr.sort_indices()
    csc = X.tocsc()             # (C, V): column t's rows are indices[indptr[t]:indptr[t+1]]
    n, w = len(S), np.ones(X.shape[1])                       # w: (V,) current column weights
    div = np.asarray(csr.sum(axis=1)).ravel()                # (C,) sum_t X0[i, t] * w_t
    base = div.copy()                                        # (C,) div at its last exact computation
    alive = np.ones(n, dtype=bool)
    picks = []
    for _ in range(min(k, n)):
        gain = np.where(alive, S * div, -np.inf)
        i = int(np.argmax(gain))                             # first maximum: lower position on ties
        if not gain[i] > 0:
            break                                            # nothing left with positive gain
        picks.append(i)
        alive[i] = False
        cols = csr.indices[csr.indptr[i]:csr.indptr[i + 1]]  # (T,) the pick's terms
        pos, col_of = _column_entries(csc.indptr, cols)      # entries of those columns in csc.data
        drop = csc.data[pos] * (w[cols][col_of] * (1.0 - decay))
        div -= np.bincount(csc.indices[pos], weights=drop, minlength=n)
        w[cols] *= decay
        stale = np.flatnonzero(alive & (div < _RECOMPUTE_BELOW * base))
        if stale.size:                                       # exact re-sum of rows that shrank a lot
            div[stale] = csr[stale] @ w
            base[stale] = div[stale]
    return np.asarray(picks, dtype=np.int64)


def _column_entries(indptr: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in a CSC data array of every entry of ``cols``, and which of ``cols`` each is in."""
    starts, lens = indptr[cols], indptr[cols + 1] - indptr[cols]
    col_of = np.repeat(np.arange(len(cols)), lens)           # (E,) index into cols
    first = np.cumsum(lens) - lens                           # (T,) offset of each column's run
    pos = np.arange(int(lens.sum())) - first[col_of] + starts[col_of]
    return pos, col_of


def _responses(func: str, responses, n: int) -> list[str]:
    docs = list(responses)
    if len(docs) != n:
        raise ConfigError(f"{func} needs one response per score. Got {len(docs)} responses for "
                          f"{n} scores.")
    bad = [i for i, d in enumerate(docs) if not isinstance(d, str)]
    if bad:
        raise ConfigError(f"The 'responses' parameter of {func} must hold strings. Position {bad[0]} "
                          f"holds {type(docs[bad[0]]).__name__}.")
    return docs


def check_ranking_params(f, k, decay, ngram_range, score_type, threshold, eos) -> None:
    """The ranking parameters of ``tfidf_greedy`` (shared with the IterIT sampler); ``f`` names the owner."""
    if not (is_int(k) and k >= 0):
        raise param_error(f, "k", "an int >= 0", k)
    if not (is_real(decay) and 0 <= decay <= 1):
        raise param_error(f, "decay", "a float in [0, 1]", decay)
    ok = (isinstance(ngram_range, (tuple, list)) and len(ngram_range) == 2
          and all(is_int(x) for x in ngram_range) and 1 <= ngram_range[0] <= ngram_range[1])
    if not ok:
        raise param_error(f, "ngram_range", "a pair of ints (lo, hi) with 1 <= lo <= hi", ngram_range)
    check_choice(f, "score_type", score_type, SCORE_TYPES)
    check_real(f, "threshold", threshold)
    if not isinstance(eos, str):
        raise param_error(f, "eos", "a string", eos)
