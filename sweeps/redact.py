"""One redaction function for everything that leaves the process (params, tags, artifacts, console).

Keys named like *token*, *password*, *secret*, *api_key*, *credential* and AWS_* have their values
replaced; a URL's password is masked wherever it appears in a value.
"""

from __future__ import annotations

import re
from typing import Any

from sweeps.storage import mask_url

MASK = "***"
_SECRET_KEY = re.compile(r"(token(?!i[sz]er)|passw(or)?d|secret|api[_-]?key|credential|private[_-]?key)|(^|[._])aws_", re.I)
_URL_WITH_PASSWORD = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@]+:[^\s/@]+@[^\s]+")
_SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(str(key))) or str(key).upper() in _SECRET_ENV


def redact_value(value: Any) -> Any:
    """Mask URL passwords inside a string value; other values pass unchanged."""
    if isinstance(value, str):
        return _URL_WITH_PASSWORD.sub(lambda m: mask_url(m.group(0)), value)
    return value


def redact(obj: Any, key: str = "") -> Any:
    """Deep copy of `obj` with secret-named entries masked and URL passwords hidden."""
    if key and is_secret_key(key.rsplit(".", 1)[-1]):
        return MASK if obj not in (None, "") else obj
    if isinstance(obj, dict):
        return {k: redact(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v) for v in obj)
    return redact_value(obj)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} → {'a.b': 1}; lists become their string form (MLflow params are strings)."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = obj
    return out
