"""MinHash near-duplicate search over texts (Broder 1997; LSH banding as in Leskovec et al., MMDS ch. 3).

``signatures``: each text's set of word 5-grams (lower-cased ``\\w+`` words; a text of fewer words is one
shingle of all its words) hashed to 64 bits, then ``num_perm`` MinHash values from a seeded multiply-shift
family h_k(x) = ((a_k * x + b_k) mod 2^64) >> 32 with odd a_k. The share of equal values between two
signatures estimates the Jaccard similarity of the two shingle sets (standard error ~ sqrt(J(1-J)/num_perm)).

``nearest``: for every text, the highest estimated Jaccard to any other text and which one. Candidates come
from LSH banding (``bands`` bands of ``num_perm / bands`` values; two texts are compared when a band agrees),
so a pair with Jaccard J is compared with probability 1 - (1 - J^r)^b: with 128 values in 32 bands of 4,
0.99 at J = 0.6 and 0.5 at J ~ 0.4. A text with no candidate reads 0.0 (below that threshold) and no
neighbour. Within a bucket each text is compared with its ``window`` next members (by index), which bounds the
work for huge buckets of copies (their estimates are ~1 whichever member is compared).
Cost: O(total words + n * num_perm) for signatures, O(n * bands * window) pairs at most.
"""

from __future__ import annotations

import hashlib

import numpy as np

from thresher.algorithms.text_signals import words

_MIX = np.uint64(0x9E3779B97F4A7C15)          # odd: combines word hashes into a shingle hash


def _word_hashes(ws: list[str], cache: dict[str, int]) -> np.ndarray:
    out = np.empty(len(ws), dtype=np.uint64)
    for i, w in enumerate(ws):
        h = cache.get(w)
        if h is None:
            h = cache[w] = int.from_bytes(hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest(), "little")
        out[i] = h
    return out


def _shingles(ws: list[str], n: int, cache: dict[str, int]) -> np.ndarray:
    """64-bit hashes of the word n-grams (one shingle of all words when there are fewer than n): (S,) uint64."""
    h = _word_hashes(ws, cache)
    k = min(n, len(h))
    m = len(h) - k + 1
    acc = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):                                     # position-weighted sum, wrapping mod 2^64
            acc = acc * _MIX + h[j: j + m]
    return acc


def signatures(texts: list[str], num_perm: int = 128, n: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures (len(texts), num_perm) uint32 and a bool mask of texts that have words (the others'
    rows are meaningless)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**63, num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)   # (K,) odd
    b = rng.integers(0, 2**63, num_perm, dtype=np.uint64)                                # (K,)
    sig = np.zeros((len(texts), num_perm), dtype=np.uint32)
    has = np.zeros(len(texts), dtype=bool)
    cache: dict[str, int] = {}
    for i, t in enumerate(texts):
        ws = words(t)
        if not ws:
            continue
        x = _shingles(ws, n, cache)                            # (S,)
        with np.errstate(over="ignore"):
            hv = (x[:, None] * a[None, :] + b[None, :]) >> np.uint64(32)   # (S, K)
        sig[i] = hv.min(axis=0).astype(np.uint32)
        has[i] = True
    return sig, has


def _candidates(sig: np.ndarray, rows: np.ndarray, bands: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j), i < j, of ``rows`` that agree on at least one band (each with its next ``window`` bucket
    members), unique."""
    r = sig.shape[1] // bands
    pairs = []
    for band in range(bands):
        part = np.ascontiguousarray(sig[rows, band * r:(band + 1) * r])            # (m, r)
        key = np.frombuffer(part.tobytes(), dtype=f"V{4 * r}")                     # one opaque key per row
        _, key = np.unique(key, return_inverse=True)
        order = np.lexsort((rows, key))                                            # bucket, then index
        k, idx = key[order], rows[order]
        for d in range(1, min(window, len(idx) - 1) + 1):
            same = k[:-d] == k[d:]
            pairs.append(np.stack([idx[:-d][same], idx[d:][same]], axis=1))
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    p = np.unique(np.sort(np.concatenate(pairs), axis=1), axis=0)
    return p[:, 0], p[:, 1]


def nearest(sig: np.ndarray, has: np.ndarray, bands: int = 32, window: int = 16,
            block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """For every row: (the highest estimated Jaccard to another row with words, float64 in [0, 1]; that row's
    index, int64, -1 when none). Ties go to the lower index. Rows without words: (NaN, -1)."""
    n = len(sig)
    best = np.where(has, 0.0, np.nan)
    who = np.full(n, -1, dtype=np.int64)
    i, j = _candidates(sig, np.flatnonzero(has), bands, window)
    est = np.concatenate([(sig[i[s:s + block]] == sig[j[s:s + block]]).mean(axis=1)
                          for s in range(0, len(i), block)]) if len(i) else np.zeros(0)
    a = np.concatenate([i, j])                                 # each pair seen from both ends
    o = np.concatenate([j, i])
    e = np.concatenate([est, est])
    order = np.lexsort((o, -e, a))                             # per row: highest estimate, then lowest index
    a, o, e = a[order], o[order], e[order]
    first = np.ones(len(a), dtype=bool)
    first[1:] = a[1:] != a[:-1]
    best[a[first]], who[a[first]] = e[first], o[first]
    return best, who
