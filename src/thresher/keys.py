"""API keys: recognising one, checking a key variable's name, and removing a key from text.

A key must never reach a log, an exception, a cache, a report or a manifest. Servers may quote the key
they received in an error body, and a text can be cut anywhere, so ``scrub_key`` removes not only the
whole key but every run of ``MIN_RUN`` (8) or more consecutive characters of it: a cut key, a key with
a prefix or a suffix glued to it, or its last 50 characters all become ``[redacted]``. A shorter run
(e.g. "sk-" alone) is not a secret and stays.

``looks_like_key`` is a heuristic for values that were typed where a name was expected
(``--judge-api-key-env sk-...``) or that ended up in a command line: a known key prefix (``sk-``,
``gsk_``, ``hf_``, ``AIza``, ...) or a run of 20+ letters and digits that mixes both, as random keys do
and names (``OPENAI_API_KEY``, ``Mixtral-8x7B-Instruct-v0.1``) do not.
"""

from __future__ import annotations

import os
import re

from thresher.errors import ConfigError

REDACTED = "[redacted]"
MIN_RUN = 8
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PREFIXES = ("sk-", "sk_", "gsk_", "xai-", "hf_", "ghp_", "github_pat_", "glpat-", "AIza", "pplx-", "nvapi-")
_ALNUM_RUN = re.compile(r"[A-Za-z0-9]{20,}")
_SECRET_VAR = re.compile(r"(API_?KEY|TOKEN|SECRET)$", re.IGNORECASE)


def looks_like_key(value) -> bool:
    """True for a string that looks like an API key (see the module docstring)."""
    if not isinstance(value, str):
        return False
    s = value.strip()
    if len(s) < 16 or any(c.isspace() for c in s):
        return False
    if s.startswith(_PREFIXES):
        return True
    return any(re.search(r"\d", m) and re.search(r"[A-Za-z]", m) for m in _ALNUM_RUN.findall(s))


def check_key_env(name, owner: str) -> str:
    """``name`` stripped, if it is a valid environment-variable name; else a ConfigError that never
    repeats the value (it may be a pasted key)."""
    if isinstance(name, str) and _ENV_NAME.match(name.strip()) and not looks_like_key(name):
        return name.strip()
    what = f"a {type(name).__name__} of {len(name)} characters" if isinstance(name, str) else type(name).__name__
    hint = (" It looks like an API key itself: never put a key on the command line or in a recipe; store it "
            "in an environment variable and give that variable's name.") if looks_like_key(name) else ""
    raise ConfigError(f"The 'api_key_env' parameter of {owner} must be the name of an environment variable "
                      f"(letters, digits and underscores, not starting with a digit), e.g. OPENAI_API_KEY. "
                      f"Got {what} (not shown).{hint}")


def scrub_key(text: str, key: str | None) -> str:
    """``text`` with the key, and every run of >= MIN_RUN consecutive characters of it, replaced by
    ``[redacted]`` (one marker per stretch)."""
    if not key or not text:
        return text
    text = text.replace(key, REDACTED)
    if len(key) < MIN_RUN or len(text) < MIN_RUN:
        return text
    grams = {key[i:i + MIN_RUN] for i in range(len(key) - MIN_RUN + 1)}
    hit = bytearray(len(text))              # 1 = this character lies in a run shared with the key
    for i in range(len(text) - MIN_RUN + 1):
        if text[i:i + MIN_RUN] in grams:
            hit[i:i + MIN_RUN] = b"\x01" * MIN_RUN
    if not any(hit):
        return text
    out, i = [], 0
    while i < len(text):
        j = i
        while j < len(text) and hit[j] == hit[i]:
            j += 1
        out.append(REDACTED if hit[i] else text[i:j])
        i = j
    return "".join(out)


def scrub_argv(argv, env=None) -> list[str]:
    """A command line fit for a manifest: every argument (or ``--flag=`` / ``key=`` value) that looks like
    a key, or that shares a run of MIN_RUN characters with the value of a key variable (OPENAI_API_KEY,
    the one named by --judge-api-key-env or judge.api_key_env=, any *API_KEY / *TOKEN / *SECRET
    variable), is replaced by ``[redacted]``."""
    env = os.environ if env is None else env
    argv = [str(a) for a in argv]
    names = {"OPENAI_API_KEY"} | {n for n in env if _SECRET_VAR.search(n)}
    for i, a in enumerate(argv):
        if a == "--judge-api-key-env" and i + 1 < len(argv):
            names.add(argv[i + 1])
        elif a.startswith(("--judge-api-key-env=", "judge.api_key_env=")):
            names.add(a.split("=", 1)[1])
    secrets = [v.strip() for n in names if len(v := env.get(n, "").strip()) >= MIN_RUN]
    out = []
    for a in argv:
        for s in secrets:
            a = scrub_key(a, s)
        head, eq, value = a.partition("=")
        if eq and looks_like_key(value):
            a = f"{head}={REDACTED}"
        elif looks_like_key(a):
            a = REDACTED
        out.append(a)
    return out
