"""DS2 score curation (Pang et al., ICLR 2025; METHODS.md 2.2-2.4, 2.7): pure functions over arrays.

Pipeline, given LLM ratings and sentence embeddings of the same N samples:
  ds2_compress      overall rating 1..10 -> score class 0..5 (``clip(overall, 4, 9) - 4``)
  hoc_consensus     1st/2nd/3rd-order agreement of scores between 2-NN neighbours (c1, c2, c3)
  hoc_estimate      score transition matrix T (rows = true score, cols = rated score) and the
                    clean score prior p, fitted to the consensus tensors
  simifeat_detect   which ratings disagree with their embedding neighbours (SimiFeat-rank),
                    with a suggested score and a confidence per sample
  long_tail_score   rareness: tanh(mean cosine distance to the k nearest neighbours / 2)
  ds2_curate        all of the above -> curated scores (0..5, higher = better) and rareness,
                    the inputs of ``thresher.selection.ds2.ds2_bucket_select``.

Written from the METHODS.md description (the reference library is not used). No model is loaded
here; neighbours come from ``thresher.algorithms.knn.knn`` (torch, CPU or CUDA).

Faithful-vs-clean switches (METHODS.md 7.2) and their defaults:
* ``duplicate_pool``: False (default, clean) = each sample once, its own neighbours exclude
  itself by index; True (faithful) = DS2's pool holding every sample twice, so a sample and its
  exact copy can be drawn together and be each other's nearest neighbour.
* failed ratings: NaN labels (default, clean) are left out of consensus and detection and come
  back NaN; ``ds2_compress(..., failed="zero")`` reproduces DS2's class 0 for them instead.
* ``keep_low_confidence_flagged``: True (default, faithful; DS2's selection rule) = flagged
  samples whose confidence is below ``confidence_prob`` keep their original score; False (fixed)
  = they get NaN and are never selected.
* ``dtype`` of the neighbour search: "float32" (default); DS2 computes in "float16".
Random draws use ``numpy.random.default_rng(seed)`` and torch's generator, so results are
reproducible here but the reference's draws cannot be replayed.
"""

from __future__ import annotations

import numpy as np

from thresher.algorithms.knn import knn
from thresher.checks import check_bool, check_choice, check_int, is_real, param_error
from thresher.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# validation


def _labels(func: str, labels, K: int) -> np.ndarray:
    """labels as float64 (n,): integers in 0..K-1, or NaN for a failed rating."""
    try:
        y = np.asarray(labels, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"The 'labels' parameter of {func} must be a 1-D array of score "
                          "classes. Got values that cannot be read as numbers.") from None
    if y.ndim != 1:
        raise ConfigError(f"The 'labels' parameter of {func} must be a 1-D array of score "
                          f"classes. Got an array of shape {y.shape}.")
    ok = np.isnan(y) | ((y == np.round(y)) & (y >= 0) & (y <= K - 1))
    if not ok.all():
        bad = np.flatnonzero(~ok)
        raise ConfigError(f"The 'labels' parameter of {func} must hold integers in 0..{K - 1} "
                          f"(K={K}) or NaN for a failed rating. Got {bad.size} other value(s), "
                          f"e.g. {float(y[bad[0]])!r} at index {bad[0]}.")
    return y


def _embeddings(func: str, emb, n: int) -> np.ndarray:
    e = np.asarray(emb, dtype=np.float32)
    if e.ndim != 2 or e.shape[0] != n:
        raise ConfigError(f"The 'emb' parameter of {func} must be a 2-D array with one row per "
                          f"label ({n}). Got shape {e.shape}.")
    return e


def _check_K(func: str, K) -> int:
    return check_int(func, "K", K, 2)


def _valid_pool(func: str, labels, emb, K: int):
    """The rows with a rating: (valid row indices (m,), int labels (m,), embeddings (m, d))."""
    y = _labels(func, labels, K)
    e = _embeddings(func, emb, len(y))
    rows = np.flatnonzero(~np.isnan(y))
    return rows, y[rows].astype(np.int64), e[rows]


def _draw(rng: np.random.Generator, m: int, sample_size: int, duplicate_pool: bool) -> np.ndarray:
    """Pool positions drawn without replacement (at most the whole pool). With the duplicated
    pool a position p in 0..2m-1 is sample p % m."""
    size = 2 * m if duplicate_pool else m
    return rng.choice(size, size=min(sample_size, size), replace=False)


# ---------------------------------------------------------------------------------------------
# step 1: compression


def ds2_compress(overall, *, failed: str = "nan") -> np.ndarray:
    """DS2's ``score_compress``: overall rating 1..10 -> score class ``clip(r, 4, 9) - 4`` in 0..5
    (<=4 -> 0, 5 -> 1, 6 -> 2, 7 -> 3, 8 -> 4, >=9 -> 5), as float64. Higher = better.

    NaN marks a failed/unparsed rating: ``failed="nan"`` (default, clean) keeps it NaN so it is
    never mistaken for a low score; ``failed="zero"`` maps it to class 0, as DS2 does (it stores
    failures as [0, 0, 0, 0]). Any other value (outside 1..10, non-integer) is an error.
    """
    f = "ds2_compress"
    check_choice(f, "failed", failed, ("nan", "zero"))
    try:
        r = np.asarray(overall, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"The 'overall' parameter of {f} must be a 1-D array of ratings. "
                          "Got values that cannot be read as numbers.") from None
    ok = np.isnan(r) | ((r == np.round(r)) & (r >= 1) & (r <= 10))
    if not ok.all():
        bad = np.flatnonzero(~ok.ravel())
        raise ConfigError(f"The 'overall' parameter of {f} must hold integer ratings in 1..10 or "
                          f"NaN for a failed rating. Got {bad.size} other value(s), e.g. "
                          f"{float(r.ravel()[bad[0]])!r} at index {bad[0]}.")
    out = np.clip(r, 4, 9) - 4                               # NaN stays NaN
    if failed == "zero":
        out[np.isnan(out)] = 0.0
    return out


# ---------------------------------------------------------------------------------------------
# step 2a: HOC


def hoc_consensus(labels, emb, K: int, *, rounds: int = 50, sample_size: int = 50000,
                  seed: int = 0, duplicate_pool: bool = False, device: str = "auto",
                  dtype: str = "float32"):
    """Empirical consensus tensors of HOC (METHODS.md 2.3(a)).

    Each of ``rounds`` rounds draws ``sample_size`` pool points without replacement (the whole
    pool if it is smaller), finds each drawn point's 2 nearest neighbours by cosine distance
    within the draw, and counts the score triples (own, 1st neighbour, 2nd neighbour).
    Returns (c1 (K,), c2 (K, K), c3 (K, K, K)): frequencies normalised by the draw size and
    averaged over rounds, so c1 sums to 1 and c2/c3 are the joint frequencies of the pair/triple.
    Rows with a NaN label are left out. ``duplicate_pool``: see the module docstring.
    """
    f = "hoc_consensus"
    K = _check_K(f, K)
    rounds = check_int(f, "rounds", rounds, 1)
    sample_size = check_int(f, "sample_size", sample_size, 3)
    check_bool(f, "duplicate_pool", duplicate_pool)
    _, y, e = _valid_pool(f, labels, emb, K)
    if len(y) < 3:
        raise ConfigError(f"{f} needs at least 3 rated rows to find 2 neighbours each. "
                          f"Got {len(y)}.")
    rng = np.random.default_rng(check_int(f, "seed", seed, 0))
    c1, c2, c3 = np.zeros(K), np.zeros(K * K), np.zeros(K ** 3)
    for _ in range(rounds):
        pos = _draw(rng, len(y), sample_size, duplicate_pool)   # (s,) pool positions
        sub = pos % len(y)                                       # (s,) sample ids
        _, nn = knn(e[sub], k=2, exclude_self=True, device=device, dtype=dtype)  # (s, 2)
        y0 = y[sub]
        y1, y2 = y0[nn[:, 0]], y0[nn[:, 1]]
        s = len(sub)
        c1 += np.bincount(y0, minlength=K) / s
        c2 += np.bincount(y0 * K + y1, minlength=K * K) / s
        c3 += np.bincount((y0 * K + y1) * K + y2, minlength=K ** 3) / s
    return c1 / rounds, (c2 / rounds).reshape(K, K), (c3 / rounds).reshape(K, K, K)


def _hoc_moments(T, p):
    """Model consensus: c1[j] = sum_i p_i T_ij; c2[j,k] = sum_i p_i T_ij T_ik; c3 likewise."""
    # plain broadcasting, not einsum: at K = 6 these are ~1k elements and a batched matmul's
    # thread wake-ups would dominate the cost
    pT = p[:, None] * T                                      # (K, K)  p_i T_ij
    c2 = (pT[:, :, None] * T[:, None, :]).sum(0)             # (K, K)
    c3 = (pT[:, :, None, None] * T[:, None, :, None] * T[:, None, None, :]).sum(0)  # (K, K, K)
    return pT.sum(0), c2, c3


def _softmax(x, dim: int):
    """Softmax by hand: ``torch.softmax`` dispatches a parallel loop even for a 6 x 6 input,
    whose thread wake-ups made the 1501-step fit ~20x slower on a busy 2-core machine."""
    import torch

    e = torch.exp(x - x.amax(dim, keepdim=True).detach())
    return e / e.sum(dim, keepdim=True)


def hoc_estimate(c1, c2, c3, K: int, *, steps: int = 1501, lr: float = 0.1, seed: int = 0):
    """Fit the score transition matrix and clean prior to the consensus (METHODS.md 2.3(a)).

    Minimises ``sum_r ||c_r_hat - c_r(T, p)||_F`` over T = row-softmax(T~), p = softmax(p~) with
    Adam (``lr``, ``steps`` steps, float64), from T~ = 5 I - 1 (diagonal-dominant, which picks
    the label permutation) and p~ = 1/K + U(0, 0.1) (torch generator seeded with ``seed``).
    Keeps the (T, p) of lowest loss seen after step 5. Returns T (K, K) with
    T[i, j] = P(rated score j | true score i) (rows sum to 1) and p (K,) = P(true score i).
    """
    import torch

    f = "hoc_estimate"
    K = _check_K(f, K)
    steps = check_int(f, "steps", steps, 1)
    if not (is_real(lr) and lr > 0):
        raise param_error(f, "lr", "a float > 0", lr)
    seed = check_int(f, "seed", seed, 0)
    target = []
    for name, c, shape in (("c1", c1, (K,)), ("c2", c2, (K, K)), ("c3", c3, (K, K, K))):
        a = np.asarray(c, dtype=np.float64)
        if a.shape != shape or not np.isfinite(a).all():
            raise ConfigError(f"The '{name}' parameter of {f} must be a finite array of shape "
                              f"{shape} (K={K}). Got shape {a.shape}.")
        target.append(torch.from_numpy(a))
    g = torch.Generator().manual_seed(seed)
    T_raw = (5 * torch.eye(K, dtype=torch.float64) - 1).requires_grad_(True)        # (K, K)
    p_raw = (1.0 / K + 0.1 * torch.rand(K, generator=g, dtype=torch.float64)).requires_grad_(True)
    opt = torch.optim.Adam([T_raw, p_raw], lr=lr)
    best, best_T, best_p = np.inf, None, None
    for step in range(steps):
        T, p = _softmax(T_raw, 1), _softmax(p_raw, 0)
        loss = sum(torch.sqrt(((ch - cm) ** 2).sum()) for ch, cm in zip(target, _hoc_moments(T, p)))
        if step > 5 and loss.item() < best:
            best, best_T, best_p = loss.item(), T.detach().clone(), p.detach().clone()
        opt.zero_grad()
        loss.backward()
        opt.step()
    if best_T is None:                                       # steps <= 6: nothing after step 5
        best_T, best_p = _softmax(T_raw, 1).detach(), _softmax(p_raw, 0).detach()
    return best_T.numpy(), best_p.numpy()


# ---------------------------------------------------------------------------------------------
# step 2b: SimiFeat-rank


def expected_noise_rate(T, p_clean, p_org) -> np.ndarray:
    """Per rated class c, rho_c = 1 - min(T_cc p_clean[c] / p_org[c], 1) = P(wrong | rated c),
    clipped as DS2 does: rho >= 1 -> 0.95, rho <= 0 -> 0.05. A class never rated gets 0.95."""
    T, pc, po = (np.asarray(a, dtype=np.float64) for a in (T, p_clean, p_org))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(po > 0, np.diag(T) * pc / np.where(po > 0, po, 1), 0.0)
    rho = 1 - np.minimum(ratio, 1)
    rho[rho >= 1] = 0.95
    rho[rho <= 0] = 0.05
    return rho


def _neighbour_votes(y_sub, dist, nn, K: int):
    """SimiFeat vote per drawn point. y_sub (s,); dist, nn (s, k-1) the other neighbours.

    The point itself is neighbour 1 with distance 2 d_2 - d_3 (DS2's self de-emphasis);
    v_c = sum_m (1 - d_m) [y_m = c], L2-normalised. Returns v (s, K).
    """
    s = len(y_sub)
    d_self = 2 * dist[:, 0] - dist[:, 1]                             # (s,)
    w = np.concatenate([1 - d_self[:, None], 1 - dist], axis=1)      # (s, k)
    lab = np.concatenate([y_sub[:, None], y_sub[nn]], axis=1)        # (s, k)
    flat = (np.arange(s)[:, None] * K + lab).ravel()
    v = np.bincount(flat, weights=w.astype(np.float64).ravel(), minlength=s * K).reshape(s, K)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def _flag_per_class(score, y_sub, rho) -> np.ndarray:
    """Within each rated class c, flag score >= the 100 (1 - rho_c) percentile (linear
    interpolation, numpy's default) of that class's scores in this draw."""
    flag = np.zeros(len(score), dtype=bool)
    for c in np.unique(y_sub):                               # K classes, not samples
        m = y_sub == c
        flag[m] = score[m] >= np.percentile(score[m], 100 * (1 - rho[c]))
    return flag


def noisy_rate(times_flagged, times_drawn):
    """DS2's noisy rate (flagged + 1) / (drawn + 2) and the error flag round(rate) == 1.

    numpy rounds half to even, so a rate of exactly 0.5 (e.g. never drawn: 0 of 0) is not an
    error; 3 flagged of 4 draws -> 4/6 -> error. Returns (rate float64, is_error bool)."""
    rate = (np.asarray(times_flagged, dtype=np.float64) + 1) / (np.asarray(times_drawn) + 2)
    return rate, np.round(rate) == 1


def suggest_scores(suggestion_counts, labels, noisy):
    """Suggested score and its confidence from per-class suggestion counts (m, K).

    S_ic = (count_ic + 1) / (sum_c count_ic + K) (Laplace smoothing), S at the own label set to
    -1 so the suggestion always differs from the rating; suggested = argmax_c S_ic (ties: lower
    class); confidence = max_c S_ic * noisy. Returns (suggested int64 (m,), confidence (m,)).
    """
    counts = np.asarray(suggestion_counts, dtype=np.float64)
    m, K = counts.shape
    S = (counts + 1) / (counts.sum(1, keepdims=True) + K)   # (m, K)
    S[np.arange(m), np.asarray(labels, dtype=np.int64)] = -1
    return S.argmax(1), S.max(1) * np.asarray(noisy, dtype=np.float64)


def simifeat_detect(labels, emb, T, p_clean, *, epochs: int = 51, sample_size: int = 50000,
                    k: int = 10, seed: int = 0, duplicate_pool: bool = False,
                    device: str = "auto", dtype: str = "float32") -> dict[str, np.ndarray]:
    """SimiFeat-rank score-error detection (METHODS.md 2.3(b)).

    Per epoch: draw ``sample_size`` pool points; their ``k`` neighbours within the draw (the point
    itself plus its k-1 nearest others); neighbour votes (see ``_neighbour_votes``); score =
    -log(v[own label] + 1e-8) (high = own score poorly supported); prediction = argmax v.
    In each rated class c the rho_c (``expected_noise_rate``) fraction of highest scores is
    flagged, and the prediction is recorded as a suggestion for the flagged points.
    Counts are per sample; a sample drawn twice in one epoch (duplicated pool) counts once.

    Returns a dict of (n,) arrays (rows with a NaN label: NaN / False / -1 / 0):
      noisy_rate = (times_flagged + 1) / (times_drawn + 2), in (0, 1); higher = more likely wrong;
      is_error = round-half-to-even(noisy_rate) == 1, i.e. noisy_rate > 0.5;
      suggested = argmax_c S_ic with S_ic = (suggestions of c + 1) / (all suggestions + K) and
        S at the own label set to -1, so it is always a different score;
      confidence = max_c S_ic * noisy_rate, in (0, 1);
      times_drawn, times_flagged (int64).
    """
    f = "simifeat_detect"
    T = np.asarray(T, dtype=np.float64)
    K = T.shape[0] if T.ndim == 2 else -1
    if T.ndim != 2 or T.shape != (K, K):
        raise ConfigError(f"The 'T' parameter of {f} must be a square (K, K) matrix. "
                          f"Got shape {T.shape}.")
    p_clean = np.asarray(p_clean, dtype=np.float64)
    if p_clean.shape != (K,):
        raise ConfigError(f"The 'p_clean' parameter of {f} must have shape ({K},) to match T. "
                          f"Got shape {p_clean.shape}.")
    epochs = check_int(f, "epochs", epochs, 1)
    k = check_int(f, "k", k, 3)
    sample_size = check_int(f, "sample_size", sample_size, k)
    check_bool(f, "duplicate_pool", duplicate_pool)
    rows, y, e = _valid_pool(f, labels, emb, K)
    m = len(y)
    if m < k:
        raise ConfigError(f"{f} needs at least k={k} rated rows. Got {m}.")
    rng = np.random.default_rng(check_int(f, "seed", seed, 0))
    rho = expected_noise_rate(T, p_clean, np.bincount(y, minlength=K) / m)

    drawn = np.zeros(m, dtype=np.int64)
    flagged = np.zeros(m, dtype=np.int64)
    sugg = np.zeros((m, K), dtype=np.int64)
    for _ in range(epochs):
        sub = _draw(rng, m, sample_size, duplicate_pool) % m     # (s,) sample ids
        dist, nn = knn(e[sub], k=k - 1, exclude_self=True, device=device, dtype=dtype)
        y_sub = y[sub]
        v = _neighbour_votes(y_sub, dist.astype(np.float64), nn, K)       # (s, K)
        score = -np.log(np.maximum(v[np.arange(len(sub)), y_sub], 0) + 1e-8)
        flag = _flag_per_class(score, y_sub, rho)
        # fancy-index "+= 1": a sample present twice in this draw is counted once
        drawn[sub] += 1
        flagged[sub[flag]] += 1
        sugg[sub[flag], v[flag].argmax(1)] += 1

    noisy, is_error = noisy_rate(flagged, drawn)
    suggested, confidence = suggest_scores(sugg, y, noisy)
    n = len(np.asarray(labels))
    out = {
        "noisy_rate": np.full(n, np.nan), "is_error": np.zeros(n, dtype=bool),
        "suggested": np.full(n, -1, dtype=np.int64), "confidence": np.full(n, np.nan),
        "times_drawn": np.zeros(n, dtype=np.int64), "times_flagged": np.zeros(n, dtype=np.int64),
    }
    out["noisy_rate"][rows] = noisy
    out["is_error"][rows] = is_error
    out["suggested"][rows] = suggested
    out["confidence"][rows] = confidence
    out["times_drawn"][rows] = drawn
    out["times_flagged"][rows] = flagged
    return out


# ---------------------------------------------------------------------------------------------
# step 2c: long-tail score


def long_tail_from_distance(mean_dist) -> np.ndarray:
    """DS2's rareness from a mean cosine distance d: round(2 / (1 + exp(-d)) - 1, 4) = tanh(d/2)
    rounded to 4 places. d = 0 -> 0.0, 0.5 -> 0.2449, 1.0 -> 0.4621; range [0, 0.7616]."""
    d = np.asarray(mean_dist, dtype=np.float64)
    return np.round(2 / (1 + np.exp(-d)) - 1, 4)


def long_tail_score(emb, *, k: int = 10, duplicate_pool: bool = False, chunk_size: int = 4096,
                    device: str = "auto", dtype: str = "float32") -> np.ndarray:
    """DS2 long-tail (rareness) score per row, in [0, 0.7616]; higher = more isolated.

    ``long_tail_from_distance`` of the mean cosine distance to the ``k`` nearest neighbours over
    the whole pool. duplicate_pool=False (clean): k nearest *other* points. True (faithful): the
    duplicated pool, where self and copy are two of the k (distance ~0), so the mean is the sum
    of the k-2 nearest other distances divided by k.
    """
    f = "long_tail_score"
    k = check_int(f, "k", k, 1)
    check_bool(f, "duplicate_pool", duplicate_pool)
    dist, _ = knn(emb, k=k, exclude_self=True, duplicate_pool=duplicate_pool,
                  chunk_size=chunk_size, device=device, dtype=dtype)
    return long_tail_from_distance(dist.astype(np.float64).mean(1))


# ---------------------------------------------------------------------------------------------
# the whole curation step


def ds2_curate(labels, emb, *, K: int = 6, confidence_prob: float = 0.5,
               keep_low_confidence_flagged: bool = True, duplicate_pool: bool = False,
               hoc_rounds: int = 50, hoc_sample_size: int = 50000, hoc_steps: int = 1501,
               hoc_lr: float = 0.1, detect_epochs: int = 51, detect_sample_size: int = 50000,
               detect_k: int = 10, rare_k: int = 10, seed: int = 0, device: str = "auto",
               dtype: str = "float32") -> dict[str, np.ndarray]:
    """DS2 steps 2-3a: curated scores and rareness from compressed ratings and embeddings.

    labels: (n,) score classes 0..K-1 (``ds2_compress`` output), NaN = failed rating;
    emb: (n, d) sentence embeddings (DS2: bge-large-en-v1.5, mean-pooled).
    Runs ``hoc_consensus`` + ``hoc_estimate`` (T, p_clean), ``simifeat_detect`` and
    ``long_tail_score``, then: a flagged row (is_error) with confidence >= ``confidence_prob``
    takes its suggested score; a flagged row below it keeps its rating when
    ``keep_low_confidence_flagged`` (DS2's rule, default) or becomes NaN (fixed variant).
    Defaults are DS2's (``tulu_template.py``: K 6, seed 0, 50 rounds x 50k, 1501 steps, lr 0.1,
    51 epochs x 50k, k 10; confidence 0.5) except the clean ``duplicate_pool=False``.

    Returns a dict: curated (n,) float 0..K-1 or NaN, higher = better; rare (n,) in
    [0, 0.7616], higher = rarer (all rows, rated or not); is_error, noisy_rate, confidence,
    suggested, times_drawn, times_flagged (see ``simifeat_detect``); T (K, K), p_clean (K,)
    (``hoc_estimate``) and p_org (K,) = histogram of the rated rows' labels.
    """
    f = "ds2_curate"
    K = _check_K(f, K)
    if not (is_real(confidence_prob) and 0 <= confidence_prob <= 1):
        raise param_error(f, "confidence_prob", "a float in [0, 1]", confidence_prob)
    check_bool(f, "keep_low_confidence_flagged", keep_low_confidence_flagged)
    y = _labels(f, labels, K)
    e = _embeddings(f, emb, len(y))
    knn_opts = dict(duplicate_pool=duplicate_pool, seed=seed, device=device, dtype=dtype)
    c1, c2, c3 = hoc_consensus(y, e, K, rounds=hoc_rounds, sample_size=hoc_sample_size, **knn_opts)
    T, p_clean = hoc_estimate(c1, c2, c3, K, steps=hoc_steps, lr=hoc_lr, seed=seed)
    det = simifeat_detect(y, e, T, p_clean, epochs=detect_epochs, sample_size=detect_sample_size,
                          k=detect_k, **knn_opts)
    rare = long_tail_score(e, k=rare_k, duplicate_pool=duplicate_pool, device=device, dtype=dtype)

    curated = y.copy()
    sure = det["is_error"] & (det["confidence"] >= confidence_prob)
    curated[sure] = det["suggested"][sure]
    if not keep_low_confidence_flagged:
        curated[det["is_error"] & ~sure] = np.nan
    rated = y[~np.isnan(y)].astype(np.int64)
    return {"curated": curated, "rare": rare, **det, "T": T, "p_clean": p_clean,
            "p_org": np.bincount(rated, minlength=K) / max(len(rated), 1)}
