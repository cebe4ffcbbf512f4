"""Encoded data on disk, shared by every process that trains or evaluates on the same data.

SFT encoding renders each conversation through a Jinja chat template (milliseconds per
conversation), and every sweep worker, every chat and export used to redo it. `cached_encode`
wraps trainer.data.encoding.encode: the first process to ask encodes and stores the result; the others
(other workers of the sweep, later sweeps, chat and export) load it. A file lock makes workers
that start together wait for the one encoding rather than all encode at once.

The key is everything the encoded result depends on, hashed: the rows themselves (both splits'
content, so any source: local files, the hub, the built-in sets), the data and task config
groups and max_seq_length, the tokenizer's saved files (vocabulary, special tokens, chat
template: what `save_pretrained` writes), the source of the trainer package (a code change
re-encodes) and the tokenizers / transformers / jinja2 versions. A stale entry cannot be hit;
old entries are simply never read again (delete the folder to reclaim the space).

Where: $LORA_SWEEP_ENCODE_CACHE, else $XDG_CACHE_HOME/lora-sweep/encoded (~/.cache/...);
LORA_SWEEP_ENCODE_CACHE=off turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from trainer.data.splits import RawData
from trainer.data.encoding import EncodedData, encode

ENV = "LORA_SWEEP_ENCODE_CACHE"
FORMAT = 1  # bump when the stored layout changes
logger = logging.getLogger(__name__)


def cache_dir() -> Path | None:
    """The folder entries live in, or None when the cache is off."""
    configured = os.environ.get(ENV)
    if configured is not None:
        return None if configured.strip().lower() in ("", "off", "0", "false", "none") else Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lora-sweep" / "encoded"


def rows_digest(ds: Any) -> str:
    """sha256 of a split's rows in order (canonical JSON, in batches: a large split is never
    held twice in memory)."""
    h = hashlib.sha256()
    h.update(json.dumps(sorted(ds.column_names)).encode())
    for batch in ds.iter(batch_size=1000):
        h.update(json.dumps(batch, sort_keys=True, default=str).encode())
    return h.hexdigest()


def tokenizer_digest(tok: Any) -> str:
    """sha256 of the files `save_pretrained` writes for the tokenizer as it is now (vocabulary,
    merges, special and added tokens, chat template, padding side). Left out: the backend's
    padding and truncation state in tokenizer.json, which transformers sets on every call (so a
    tokenizer that has encoded once saves differently from a fresh one, for the same encoding)."""
    h = hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="lora-sweep-tok-") as folder:
        tok.save_pretrained(folder)
        for path in sorted(Path(folder).rglob("*")):
            if not path.is_file():
                continue
            content = path.read_bytes()
            if path.name == "tokenizer.json":
                backend = {k: v for k, v in json.loads(content).items() if k not in ("padding", "truncation")}
                content = json.dumps(backend, sort_keys=True).encode()
            h.update(path.name.encode() + b"\0" + content + b"\0")
    return h.hexdigest()


def code_digest() -> str:
    """sha256 of the trainer package's Python source: a change to how data is encoded (or to
    anything it calls) gives new keys."""
    h = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        h.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def encode_key(raw: RawData, tok: Any, data: dict[str, Any], task: dict[str, Any], max_len: int) -> str:
    """The entry's name: a sha256 over everything the encoded result depends on (module doc)."""
    parts = {"format": FORMAT, "train": rows_digest(raw.train), "eval": rows_digest(raw.eval),
             "num_labels": raw.num_labels, "label_names": raw.label_names, "data": data, "task": task,
             "max_len": max_len, "tokenizer": tokenizer_digest(tok), "code": code_digest(),
             "versions": {n: _version(n) for n in ("tokenizers", "transformers", "jinja2", "datasets")}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def cached_encode(raw: RawData, tok: Any, data: dict[str, Any], task: dict[str, Any], max_len: int,
                  folder: Path | None = None) -> EncodedData:
    """trainer.data.encoding.encode, stored on disk under `encode_key` and read back by every later
    caller; `folder` defaults to cache_dir() (None there: plain encode)."""
    folder = folder if folder is not None else cache_dir()
    if folder is None:
        return encode(raw, tok, data, task, max_len)
    from filelock import FileLock

    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    key = encode_key(raw, tok, data, task, max_len)
    entry = folder / f"{key}.pkl"
    with FileLock(str(folder / f"{key}.lock")):  # the first process encodes; the others wait, then read
        if entry.is_file():
            with open(entry, "rb") as f:
                encoded = pickle.load(f)  # our own entry, written below into the user's cache folder
            logger.info("encoded data: read %s (%.1f s)", entry, time.perf_counter() - t0)
            return encoded
        encoded = encode(raw, tok, data, task, max_len)
        partial = entry.with_suffix(f".{os.getpid()}.tmp")
        with open(partial, "wb") as f:
            pickle.dump(encoded, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(partial, entry)  # atomic: a reader never sees half an entry
        logger.info("encoded data: wrote %s (%.1f s)", entry, time.perf_counter() - t0)
        return encoded
