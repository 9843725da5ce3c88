"""Text cues of a noisy (instruction, response) pair: pure functions over lists of strings, no model.

Each function takes equal-length lists of texts and returns a float64 array of one value per pair (NaN where
the cue is undefined, as documented per function). Every function is linear in the text length: a pass of a
compiled regex, ``set``/``dict`` look-ups, or numpy over the text's code points. Direction and range are given
per function; ``thresher.scoring.guard_text`` turns them into score columns.

Words are ``\\w+`` runs of the lower-cased text (so a run of CJK characters is one word).
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
import zlib

import numpy as np

WORD = re.compile(r"\w+")
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})

# Refusals and non-answers (English). A response is a refusal when one of REFUSALS occurs in its first
# ``window`` characters (case-insensitive, curly apostrophes read as straight ones), or when the whole
# response, stripped of surrounding punctuation, is one of NON_ANSWERS.
REFUSALS = (
    "i'm sorry, but", "i am sorry, but", "i'm sorry, i can", "i am sorry, i can", "sorry, but i can",
    "sorry, i can't", "sorry, i cannot", "i apologize, but", "i apologise, but",
    "as an ai language model", "as a language model", "as an ai assistant", "as an ai,", "as an ai model",
    "i cannot help with", "i can't help with", "i can not help with", "i cannot assist", "i can't assist",
    "i cannot provide", "i can't provide", "i cannot fulfill", "i can't fulfill", "i cannot comply",
    "i can't comply", "i cannot answer", "i can't answer", "i cannot do that", "i can't do that",
    "i'm unable to", "i am unable to", "i'm not able to", "i am not able to", "i won't be able to",
    "i will not be able to", "i must decline", "i'm not comfortable", "i am not comfortable",
    "it is not appropriate for me", "it's not appropriate for me", "i do not have the ability",
    "i don't have the ability", "i do not have access to", "i don't have access to",
    "i cannot browse", "i can't browse", "i'm just an ai", "i am just an ai",
)
NON_ANSWERS = ("i don't know", "i do not know", "i'm not sure", "i am not sure", "not sure", "no idea",
               "i have no idea", "idk", "i can't say", "i cannot say", "no comment")
_REFUSAL_RE = re.compile("|".join(re.escape(p) for p in REFUSALS))

# An empty response: nothing but whitespace and punctuation, or one of these placeholders (compared
# lower-cased, stripped of surrounding punctuation and whitespace).
BOILERPLATE = ("n/a", "na", "none", "null", "nan", "nil", "tbd", "todo", "empty", "no output", "no response",
               "no answer", "<nooutput>", "nooutput", "<noinput>", "noinput", "output", "response", "answer",
               "lorem ipsum")
_STRIP = " \t\r\n.,;:!?-_*#'\"`()[]{}<>…"

# Stopword profiles of the Latin-script languages ``guess_language`` tells apart. A word found in several
# profiles counts 1/(number of profiles) for each.
STOPWORDS = {
    "en": "the a and of to in is that it for you with as on are this be was have not or by but from they "
          "what which can will would there their an if at all your we my how when has do does",
    "es": "el la los las de que y en un una es por con para del al se no lo como más pero sus le ya o "
          "este esta son también muy hay fue ser tiene sobre entre cuando todo qué cómo",
    "fr": "le la les de des du et en un une est que qui dans pour pas sur au aux avec ce cette il elle "
          "sont ne se plus par mais ou nous vous leur être avoir fait comme",
    "de": "der die das und ist in den von zu mit sich des auf für nicht ein eine dem als auch es an "
          "werden aus er hat dass sie nach wird bei einer um noch wie ich oder",
    "pt": "o a os as de que e do da em um uma para com não por mais dos das se na no ao como mas foi "
          "ele ela seu sua ou ser quando muito também são está você",
    "it": "il lo la i gli le di che e è un una per con non del della in sono si da al come ma anche "
          "questo questa nel più ha essere alla dei delle",
    "nl": "de het een en van ik te dat die in is niet op aan met voor zijn er maar om ook als dan bij "
          "nog wel naar kan je wat zo uit wordt hoe",
}
LANGUAGES = tuple(STOPWORDS)
LANG_MIN_WORDS = 8          # a text with fewer words gets no language guess (NaN)
LANG_MIN_HITS = 2.0         # nor one whose stopword weight (summed over profiles) is below this
LANG_WORDS = 300            # only the first words are read

# A tail token that has no letter or digit but is one of these is not junk (markdown and code markers).
_MARKERS = {"```", "---", "***", "___", "|", "-", "*", "+", "•", "—", "–", "...", "…", ":", "=", "#", "##",
            "###", "}", ")", "]", "};", ");", "});", "/>", "-->", "*/", "%>", "?>"}
_LIST_ITEM = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+\S")


def words(text: str) -> list[str]:
    """The lower-cased ``\\w+`` words of ``text``."""
    return WORD.findall(text.lower())


def content_words(text: str) -> list[str]:
    """``words`` without the stopwords of every STOPWORDS profile."""
    index = _stopword_index()[0]
    return [w for w in words(text) if w not in index]


def _ngrams(ws: list[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(ws[i:] for i in range(n))))


def refusal(responses: list[str], window: int = 200) -> np.ndarray:
    """1.0 when a response refuses (a REFUSALS phrase in its first ``window`` characters) or is a bare
    non-answer (NON_ANSWERS), else 0.0. Higher = more suspect. Typical: ~0 on curated data; a few % on
    ShareGPT (many "As an AI language model" openings)."""
    out = np.zeros(len(responses))
    for i, r in enumerate(responses):
        head = r[:window].lower().translate(_QUOTES)
        out[i] = bool(_REFUSAL_RE.search(head)) or head.strip(_STRIP) in NON_ANSWERS
    return out


def copy_overlap(instructions: list[str], responses: list[str], n: int = 3) -> np.ndarray:
    """Share of the response's word n-grams (n = 3; fewer when the response is shorter) that occur in the
    instruction, [0, 1]. 1 = the response copies the instruction; typical answers 0-0.1. NaN for a response
    without words."""
    out = np.full(len(responses), np.nan)
    for i, (q, a) in enumerate(zip(instructions, responses)):
        wa = words(a)
        k = min(n, len(wa))
        if k == 0:
            continue
        grams = _ngrams(wa, k)
        have = set(_ngrams(words(q), k))
        out[i] = sum(g in have for g in grams) / len(grams)
    return out


def compression_ratio(responses: list[str]) -> np.ndarray:
    """zlib-compressed bytes / raw UTF-8 bytes of the response (level 9). Lower = more repetitive: degenerate
    loops read 0.02-0.2, ordinary prose 0.4-0.7; short texts (< ~100 bytes) read high (> 0.8, even > 1) from
    zlib's fixed overhead. NaN for an empty response."""
    out = np.full(len(responses), np.nan)
    for i, r in enumerate(responses):
        raw = r.encode("utf-8")
        if raw:
            out[i] = len(zlib.compress(raw, 9)) / len(raw)
    return out


def repeat_ngram(responses: list[str], n: int = 4) -> np.ndarray:
    """Share of the response's word n-grams (n = 4) that repeat an earlier n-gram of the same response,
    [0, 1). Higher = more repetitive: loops read > 0.5, ordinary answers < 0.05. NaN below n words."""
    out = np.full(len(responses), np.nan)
    for i, r in enumerate(responses):
        grams = _ngrams(words(r), n)
        if grams:
            out[i] = 1.0 - len(set(grams)) / len(grams)
    return out


@functools.cache
def _script_table() -> tuple[np.ndarray, tuple[str, ...]]:
    """(code point -> script id, script names): for every letter of the Basic and Supplementary Multilingual
    Planes the first word of its Unicode name (LATIN, CYRILLIC, GREEK, ARABIC, CJK, HIRAGANA, HANGUL, ...);
    id 0 = not a letter. Built once (~0.2 s)."""
    limit = 0x30000
    table = np.zeros(limit, dtype=np.uint16)
    names: dict[str, int] = {}
    for cp in range(limit):
        ch = chr(cp)
        if ch.isalpha():
            script = unicodedata.name(ch, "OTHER").split(" ", 1)[0]
            table[cp] = names.setdefault(script, len(names) + 1)
    return table, ("",) + tuple(names)


def script_histogram(text: str) -> np.ndarray:
    """Share of the text's letters in each script (ids of ``_script_table``); all zeros without letters."""
    table, names = _script_table()
    cps = np.frombuffer(text.encode("utf-32-le" if sys.byteorder == "little" else "utf-32-be"), dtype=np.uint32)
    ids = table[cps[cps < len(table)]]
    hist = np.bincount(ids, minlength=len(names))[: len(names)].astype(np.float64)
    hist[0] = 0.0
    total = hist.sum()
    return hist / total if total else hist


def script_mismatch(instructions: list[str], responses: list[str]) -> np.ndarray:
    """1 - the overlap (sum of element-wise minima) of the script histograms of the instruction's and the
    response's letters, [0, 1]. 0 = same script mix; 1 = no script in common (a Russian or Chinese answer to an
    English question). Code and numbers do not count (only letters). NaN when either side has no letters."""
    out = np.full(len(responses), np.nan)
    for i, (q, a) in enumerate(zip(instructions, responses)):
        hq, ha = script_histogram(q), script_histogram(a)
        if hq.any() and ha.any():
            out[i] = 1.0 - np.minimum(hq, ha).sum()
    return np.clip(out, 0.0, 1.0)


@functools.cache
def _stopword_index() -> tuple[dict[str, int], np.ndarray]:
    """(word -> row, weights (V, languages)): each stopword's 1/(profiles holding it) per language."""
    vocab = sorted({w for ws in STOPWORDS.values() for w in ws.split()})
    index = {w: i for i, w in enumerate(vocab)}
    weights = np.zeros((len(vocab) + 1, len(LANGUAGES)))          # last row: words in no profile
    for j, lang in enumerate(LANGUAGES):
        for w in set(STOPWORDS[lang].split()):
            weights[index[w], j] = 1.0
    weights[:-1] /= weights[:-1].sum(axis=1, keepdims=True)
    return index, weights


def guess_language(text: str) -> str | None:
    """The language (one of LANGUAGES) whose stopword profile the text's first LANG_WORDS words match best;
    None when the text has fewer than LANG_MIN_WORDS words, fewer than LANG_MIN_HITS stopword weight, is not
    mostly Latin script, or two languages tie."""
    ws = words(text)[:LANG_WORDS]
    if len(ws) < LANG_MIN_WORDS:
        return None
    index, weights = _stopword_index()
    score = weights[[index.get(w, -1) for w in ws]].sum(axis=0)  # (languages,)
    top = np.sort(score)[::-1]
    if top[0] < LANG_MIN_HITS or top[0] == top[1]:
        return None
    latin = script_histogram(text)[_script_table()[1].index("LATIN")]
    return LANGUAGES[int(np.argmax(score))] if latin >= 0.5 else None


def lang_mismatch(instructions: list[str], responses: list[str]) -> np.ndarray:
    """1.0 when ``guess_language`` names different languages for instruction and response, 0.0 when the same;
    NaN when either cannot be told (too short, not Latin script: see ``script_mismatch`` for those). Note that
    a requested translation reads 1.0."""
    out = np.full(len(responses), np.nan)
    for i, (q, a) in enumerate(zip(instructions, responses)):
        lq, la = guess_language(q), guess_language(a)
        if lq and la:
            out[i] = float(lq != la)
    return out


def empty(responses: list[str]) -> np.ndarray:
    """1.0 for an empty, whitespace-only or punctuation-only response, or a BOILERPLATE placeholder; else 0.0."""
    out = np.zeros(len(responses))
    for i, r in enumerate(responses):
        core = r.strip().lower().strip(_STRIP)
        out[i] = not WORD.search(core) or core in BOILERPLATE
    return out


_CLOSERS = "\"'\u201d\u2019)]}*_`>"
_TERMINAL = ".!?。！？」』"


def _ends_cleanly(text: str) -> float:
    t = text.rstrip()
    if not t:
        return np.nan
    fences = t.count("```")
    if fences % 2:
        return 0.0                                             # an open code fence
    if t.endswith("```"):
        return 1.0                                             # a closed one
    if t.endswith(("...", "…")):
        return 0.0
    last = t.rsplit("\n", 1)[-1].strip()
    if last.startswith("|") and last.endswith("|"):
        return 1.0                                             # a table row
    if _LIST_ITEM.match(last) and last[-1] not in ",:;-([{" and len(words(last)) >= 1:
        return 1.0                                             # a list item
    core = t.rstrip(_CLOSERS)
    if core and core[-1] in _TERMINAL:
        return 1.0
    return float("\n" not in t and len(words(t)) <= 3 and t[-1] not in ",:;-([{")   # a short answer: "Paris"


def ends_cleanly(responses: list[str]) -> np.ndarray:
    """1.0 when the response ends like a finished answer: terminal punctuation (. ! ? and CJK ones, possibly
    inside closing quotes or brackets), a closed code fence, a table row or list item as its last line, or a
    one-line answer of at most 3 words; 0.0 otherwise (mid-sentence, an open code fence, a trailing "...").
    Lower = looks cut off. NaN for an empty response."""
    return np.array([_ends_cleanly(r) for r in responses], dtype=np.float64)


def _trigrams(word: str) -> set[str]:
    padded = f" {word} "
    return {padded[i:i + 3] for i in range(len(padded) - 2)}


def junk_tail(responses: list[str], share: float = 0.2, most: int = 12, min_head: int = 30) -> np.ndarray:
    """Share of the characters of the response's tail (its last ``share`` of whitespace tokens, at least one and
    at most ``most``) that sit in junk tokens, [0, 1]. Junk: a token with no letter or digit (other than
    markdown/code markers such as ``` or |); and, when the rest of the response has at least ``min_head`` words to
    compare with, a token whose word is new to the response AND mostly made of character 3-grams the rest never
    uses ("asdf", "qwer"; a real new word shares most of its 3-grams with the text before it). Higher = more
    suspect. On 400 ShareGPT replies: median 0.24 (90th percentile 0.57); with " asdf qwer %%%% #### zxcv"
    appended, median 0.51 (AUROC 0.81 alone). A pool-relative signal. NaN for fewer than 2 tokens."""
    out = np.full(len(responses), np.nan)
    for i, r in enumerate(responses):
        toks = r.split()
        if len(toks) < 2:
            continue
        k = min(most, max(1, int(round(len(toks) * share))))
        head = words(" ".join(toks[:-k]))
        known = set(head) if len(head) >= min_head else None
        grams = set().union(*map(_trigrams, known)) if known else set()
        junk = total = 0
        for tok in toks[-k:]:
            total += len(tok)
            ws = words(tok)
            if not ws:
                junk += len(tok) * (tok not in _MARKERS)
            elif known is not None and any(w not in known and len(_trigrams(w) - grams) * 2 > len(_trigrams(w))
                                           for w in ws):
                junk += len(tok)
        out[i] = junk / total
    return out
