"""One redaction layer for everything that leaves the process (params, tags, artifacts, study
attributes, failure reasons, reports).

Secrets arrive two ways, so there are two rules:
- by name: a config key, override, query parameter or environment variable whose name says it
  holds a secret has its whole value replaced. Names are compared word by word (split on `.`, `_`,
  `-`, spaces and camelCase), so `hf_token`, `api_key`, `db_passwd` are secret while `pad_token`,
  `eos_token_id`, `max_new_tokens`, `tokenizer_name` stay readable.
- by shape, in any text: URL passwords, `Bearer` credentials, secret `key=value` pairs and query
  parameters, well-known token formats (Hugging Face, OpenAI-style `sk-`, AWS key ids, GitHub,
  Slack, JWT, PEM private keys) and the value of every secret-named environment variable of this
  process.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from typing import Any
from urllib.parse import quote

MASK = "***"

# -- names ------------------------------------------------------------------------------------
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+")
# a secret wherever the word appears in the name
_ALWAYS = frozenset({"password", "passwd", "passphrase", "secret", "secrets", "credential", "credentials",
                     "apikey", "apitoken", "accesstoken", "authtoken", "accesskey", "secretkey", "privatekey",
                     "authorization", "cookie"})
# `<word>_token` is a tokenizer's special token, not a credential
_VOCAB_TOKENS = frozenset({"pad", "bos", "eos", "unk", "sep", "cls", "mask", "start", "end", "stop", "special",
                           "additional", "sentinel", "image", "img", "audio", "video", "vision", "boi", "eoi",
                           "eot", "eom", "fim", "prefix", "suffix", "middle", "placeholder", "decoder", "new",
                           "chat", "think", "default", "sample", "num", "max", "min"})
# `<word>_key` that names a lookup/index/column, not a credential; any other `*_key` is masked
_PLAIN_KEYS = frozenset({"sort", "group", "cache", "primary", "foreign", "partition", "hash", "metric", "monitor",
                         "dict", "lookup", "join", "index", "label", "text", "column", "input", "output", "target",
                         "query", "value", "row", "sample", "feature", "object", "ref", "unique", "composite",
                         "routing", "shard", "map", "match", "attention", "model", "data", "config", "registry",
                         "study", "trial", "run", "experiment", "param", "tag", "seed", "public", "s"})
# AWS_* settings that are not credentials
_AWS_PLAIN = frozenset({"region", "profile", "output", "endpoint", "config", "pager", "bundle", "retry",
                        "attempts", "timeout", "sdk", "lambda", "execution", "batch", "default"})


def key_words(key: Any) -> list[str]:
    """`model.hfToken` → ['model', 'hf', 'token']; digits are dropped (`token2` is `token`)."""
    return [w.lower() for w in _WORD.findall(str(key))]


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """Whether a value stored under this name (its last dotted part) is a secret; see the module doc."""
    words = key_words(str(key).rsplit(".", 1)[-1])
    if not words:
        return False
    if _ALWAYS.intersection(words) or any("passw" in w or "passphrase" in w for w in words):  # PGPASSWORD
        return True
    last, before = words[-1], (words[-2] if len(words) > 1 else None)
    if last == "token":
        return before not in _VOCAB_TOKENS
    if last == "key":
        return before not in _PLAIN_KEYS
    return words[0] == "aws" and bool({"access", "session", "security", "token", "key"} & set(words))


@functools.lru_cache(maxsize=1024)
def is_secret_env(name: str) -> bool:
    """Environment variables whose values are masked in any text: secret names and AWS_* credentials
    (not region, profile, endpoints and other settings)."""
    words = key_words(name)
    if words and words[0] == "aws" and len(words) > 1 and not _AWS_PLAIN.intersection(words[1:]):
        return True
    return is_secret_key(name)


_MIN_ENV_SECRET = 6  # shorter values ("1", "true") are settings, and masking them would shred text
_ANYWHERE_ENV_SECRET = 12


def env_secrets() -> list[str]:
    """Values (and their URL-encoded forms) of this process's secret-named environment variables,
    longest first."""
    found: set[str] = set()
    for name, value in os.environ.items():
        if len(value) >= _MIN_ENV_SECRET and is_secret_env(name):
            found.update((value, quote(value, safe=""), quote(value, safe="/:")))
    return sorted(found, key=len, reverse=True)


@functools.lru_cache(maxsize=8)
def _env_pattern(secrets: tuple[str, ...]) -> re.Pattern | None:
    """One regex for all env secrets. A short one (a word, like `DB_PASSWORD=postgres`) must stand
    alone, so `postgresql://` survives; a long one (a random token) is masked anywhere."""
    if not secrets:
        return None

    def edge(s: str) -> str:
        if len(s) >= _ANYWHERE_ENV_SECRET:
            return re.escape(s)
        before = r"(?<![A-Za-z0-9])" if s[0].isalnum() else ""
        after = r"(?![A-Za-z0-9])" if s[-1].isalnum() else ""
        return before + re.escape(s) + after

    return re.compile("|".join(edge(s) for s in secrets))


# -- shapes in free text --------------------------------------------------------------------
_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S)
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@]*:)[^\s/@]+(@)")  # scheme://user:PASSWORD@
_AUTH_HEADER = re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(?:(\w+)\s+)?([^\s\"',;]+)")
_BEARER = re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/\-]{6,}=*")
_QUERY = re.compile(r"([?&;])([^=&#\s?]+)=([^&#\s'\"]*)")
_QUERY_SECRETS = frozenset({"sig", "signature", "x-amz-signature", "x-amz-credential", "x-amz-security-token", "code"})
_ASSIGNMENT = re.compile(r"(?<![\w.\-])(?P<name>[A-Za-z_][\w.\-]*)(?P<mid>[\"']?\s*[:=]\s*)"
                         r"(?P<value>\$\{[^}\n]*\}|\"[^\"\n]*\"|'[^'\n]*'|\[[^\]\n]*\]|\{[^}\n]*\}|[^\s\"',;&)}\]]+)")
_TOKEN_SHAPES = re.compile("|".join((
    r"\bhf_[A-Za-z0-9]{20,}",                              # Hugging Face
    r"\bsk-[A-Za-z0-9_\-]{20,}",                           # OpenAI / Anthropic style
    r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA|ASCA)[A-Z0-9]{16}\b",  # AWS key ids
    r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})",
    r"\bxox[abposr]-[A-Za-z0-9\-]{10,}",                   # Slack
    r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",  # JWT
)))
_INTERPOLATION = re.compile(r"\$\{(oc\.env:[A-Za-z_][A-Za-z0-9_]*|[A-Za-z_][\w.]*)\}")


def _mask_assignment(m: re.Match) -> str:
    value = m.group("value")
    name = m.group("name")
    if (not is_secret_key(name) or "authorization" in key_words(name)  # _AUTH_HEADER keeps the scheme
            or value.strip("\"'") in (MASK, "") or _INTERPOLATION.fullmatch(value)):
        return m.group(0)
    quote_char = value[0] if value[0] in "\"'" else ""
    return f"{name}{m.group('mid')}{quote_char}{MASK}{quote_char}"


def _mask_query(m: re.Match) -> str:
    name = m.group(2)
    if m.group(3) and (is_secret_key(name) or name.lower() in _QUERY_SECRETS):
        return f"{m.group(1)}{name}={MASK}"
    return m.group(0)


def scrub_text(text: str) -> str:
    """Mask secrets in free text (error messages, tracebacks, override lines, any string value)."""
    if not text:
        return text
    text = _PEM.sub(MASK, text)
    text = _URL_PASSWORD.sub(rf"\g<1>{MASK}\g<2>", text)
    text = _AUTH_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2) + ' ' if m.group(2) else ''}{MASK}", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    text = _QUERY.sub(_mask_query, text)
    text = _ASSIGNMENT.sub(_mask_assignment, text)
    text = _TOKEN_SHAPES.sub(MASK, text)
    pattern = _env_pattern(tuple(env_secrets()))
    return pattern.sub(MASK, text) if pattern is not None else text


# -- structured values ----------------------------------------------------------------------
def redact_value(value: Any) -> Any:
    """Mask secrets inside a string value (an override line `key=value` by its key, any text by
    shape); other scalars pass unchanged."""
    return redact_override(value) if isinstance(value, str) else value


def _masked(value: Any) -> Any:
    if value in (None, "") or (isinstance(value, str) and _INTERPOLATION.fullmatch(value)):
        return value  # nothing there, or `${oc.env:HF_TOKEN}`: a pointer to the secret, not the secret
    return MASK


def redact(obj: Any, key: str = "") -> Any:
    """Deep copy of `obj` with secret-named entries masked whole and secrets in strings masked."""
    if key and is_secret_key(key):
        return _masked(obj)
    if isinstance(obj, dict):
        return {k: redact(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v) for v in obj)
    return redact_value(obj)


_OVERRIDE = re.compile(r"^(?P<prefix>[+~]{0,2})(?P<key>[A-Za-z_][\w.\-/]*)(?P<package>@[^=\s]*)?=(?P<value>.*)$", re.S)


def redact_override(line: str) -> str:
    """A Hydra override line with its value masked when its key is secret-named
    (`+model.hf_token=hf_...` → `+model.hf_token=***`), otherwise scrubbed as text."""
    m = _OVERRIDE.match(str(line))
    if m and is_secret_key(m.group("key")):
        return f"{m.group('prefix')}{m.group('key')}{m.group('package') or ''}={_masked(m.group('value'))}"
    return scrub_text(str(line))


def redact_yaml(text: str) -> str:
    """A YAML document (a config.yaml artifact, Hydra's overrides.yaml) with the same masking as
    `redact`; text that is not a YAML mapping or list is scrubbed as free text."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return scrub_text(text)
    if not isinstance(data, (dict, list)):
        return scrub_text(text)
    clean = redact(data)
    if clean == data:
        return text  # nothing to mask: keep the writer's formatting
    return yaml.safe_dump(clean, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1 << 16)


class ScrubFilter(logging.Filter):
    """Masks secrets in log records before a handler writes them (e.g. Hydra's job log file)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is logging's problem, not ours
            return True
        clean = scrub_text(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub_text(record.exc_text)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_log_scrubbing(logger: logging.Logger | None = None) -> None:
    """Attach a ScrubFilter to every handler of `logger` (root by default), once."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, ScrubFilter) for f in handler.filters):
            handler.addFilter(ScrubFilter())


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} → {'a.b': 1}; lists become their string form (MLflow params are strings)."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = obj
    return out
