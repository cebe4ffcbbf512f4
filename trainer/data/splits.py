"""Load the raw train/eval splits a config names, with fixed-seed subsetting and label checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.data.conversations import as_split, read_jsonl, resolve_format, to_conversations
from trainer.errors import ConfigError
from trainer.trace import traced

SUBSET_SEED = 1234  # fixed: the max_*_samples subset must not depend on any trial seed


@dataclass
class RawData:
    """Untokenized splits plus the label space they define."""

    train: Any  # datasets.Dataset
    eval: Any
    num_labels: int | None
    label_names: list[str] | None


def _local_files(source: str, data: dict[str, Any]) -> dict[str, str]:
    ext = {"jsonl": "jsonl", "csv": "csv", "parquet": "parquet", "sst2": "jsonl"}[source]
    folder = Path(data["path"]).expanduser()
    folder = folder if folder.is_absolute() else Path.cwd() / folder
    files = {s: folder / f"{data[k]}.{ext}" for s, k in (("train", "train_split"), ("eval", "eval_split"))}
    for split, f in files.items():
        if not f.is_file():
            raise ConfigError("data.path", data["path"], f"a folder containing {f.name}", f"{f} not found")
    return {split: str(f) for split, f in files.items()}


def _load_source(data: dict[str, Any]) -> tuple[Any, Any]:
    import datasets

    source = data["source"]
    if source == "demo":
        from trainer.data.demo_data import demo_splits

        train, eval_ = demo_splits(data["demo_train_size"], data["demo_eval_size"])
        return datasets.Dataset.from_dict(train), datasets.Dataset.from_dict(eval_)
    if source == "sst2" and not (data.get("path") and Path(data["path"]).expanduser().is_dir()):
        ds = datasets.load_dataset(data["hub_id"], data.get("hub_config"))
        return ds[data["train_split"]], ds[data["eval_split"]]
    if source in ("sst2", "jsonl", "csv", "parquet"):
        builder = {"csv": "csv", "parquet": "parquet"}.get(source, "json")
        ds = datasets.load_dataset(builder, data_files=_local_files(source, data))
        return ds["train"], ds["eval"]
    ds = datasets.load_dataset(data["hub_id"], data.get("hub_config"))
    return ds[data["train_split"]], ds[data["eval_split"]]


def _cap(ds: Any, n: int | None) -> Any:
    """First n rows after a fixed-seed shuffle: a representative subset, identical for all trials."""
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=SUBSET_SEED).select(range(n))


def _check_column(ds: Any, key: str, column: str, split: str) -> None:
    if column not in ds.column_names:
        raise ConfigError(key, column, f"one of the {split} columns ({', '.join(ds.column_names)})",
                          f"missing column {column!r}")


def _encode_string_labels(train: Any, eval_: Any, column: str, names: list[str] | None) -> tuple[Any, Any, list[str]]:
    """Map string labels to ids by `label_names` order (or sorted order when not given)."""
    names = list(names) if names else sorted(set(train[column]) | set(eval_[column]))
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted((set(train[column]) | set(eval_[column])) - set(index))
    if unknown:
        raise ConfigError("data.label_names", names, "a list containing every label value", f"unknown labels: {unknown}")
    fn = lambda b: {column: [index[v] for v in b[column]]}  # noqa: E731
    return train.map(fn, batched=True), eval_.map(fn, batched=True), names


def _check_labels(ds: Any, column: str, num_labels: int, split: str) -> None:
    bad = sorted({v for v in ds[column] if not isinstance(v, int) or not 0 <= v < num_labels}, key=str)
    if bad:
        raise ConfigError("data.label_column", bad[:20], f"integer labels in [0, {num_labels}) (num_labels={num_labels})",
                          f"bad label values in the {split} split of column {column!r}")


def _conversation_splits(data: dict[str, Any], fmt: str) -> tuple[Any, Any]:
    """Both splits as conversations stored by `trainer.data.conversations.as_split`; every row checked
    (trainer.data.conversations) before any subsetting, so a bad row is reported by its number in the file."""
    import datasets

    source = data["source"]
    if source == "demo_chat":
        from trainer.data.demo_chat import demo_chat_splits

        train, eval_ = demo_chat_splits(data["demo_train_size"], data["demo_eval_size"])
        return as_split((m, None) for m in train), as_split((m, None) for m in eval_)
    if source == "jsonl":  # read as JSON, never through Arrow: each row keeps exactly its own keys
        return tuple(as_split(to_conversations(read_jsonl(file), data, fmt, file))  # type: ignore[return-value]
                     for file in _local_files(source, data).values())
    if source in ("csv", "parquet"):
        files = _local_files(source, data)
        ds = datasets.load_dataset(source, data_files=files)
        return tuple(as_split(to_conversations(ds[split].to_list(), data, fmt, files[split], from_arrow=True))
                     for split in ("train", "eval"))  # type: ignore[return-value]
    if source == "demo":
        raise ConfigError("data", "demo", "chat data (data=demo_chat, jsonl, csv, parquet or hub) for task=sft",
                          "data=demo is a text/label set")
    ds = datasets.load_dataset(data["hub_id"], data.get("hub_config"))
    return tuple(as_split(to_conversations(ds[data[k]].to_list(), data, fmt, f"{data['hub_id']} split {data[k]}",
                                           from_arrow=True))
                 for k in ("train_split", "eval_split"))  # type: ignore[return-value]


@traced("trainer.tokenize")
def load_raw(data: dict[str, Any], task_type: str) -> RawData:
    """Splits for a `data` config group (plain dict); validates columns and labels (and, for
    task=sft, every conversation)."""
    if task_type == "sft":
        train, eval_ = _conversation_splits(data, resolve_format(data, task_type))
        return RawData(_cap(train, data.get("max_train_samples")), _cap(eval_, data.get("max_eval_samples")), None, None)
    train, eval_ = _load_source(data)
    train, eval_ = _cap(train, data.get("max_train_samples")), _cap(eval_, data.get("max_eval_samples"))
    for split, ds in (("train", train), ("eval", eval_)):
        _check_column(ds, "data.text_column", data["text_column"], split)
        if task_type == "causal_lm" and data.get("completion_column"):
            _check_column(ds, "data.completion_column", data["completion_column"], split)
    label = data.get("label_column")
    if label is None or (task_type == "causal_lm" and data.get("completion_column")):
        return RawData(train, eval_, None, data.get("label_names"))
    for split, ds in (("train", train), ("eval", eval_)):
        _check_column(ds, "data.label_column", label, split)
    names = data.get("label_names")
    if train.features[label].dtype == "string":
        train, eval_, names = _encode_string_labels(train, eval_, label, names)
    num_labels = data.get("num_labels") or (max(train[label]) + 1 if len(train) else 0)
    if names and len(names) != num_labels:
        raise ConfigError("data.label_names", names, f"a list of {num_labels} names (num_labels)")
    for split, ds in (("train", train), ("eval", eval_)):
        _check_labels(ds, label, num_labels, split)
    return RawData(train, eval_, num_labels, names)


def check_test_split(data: dict[str, Any]) -> None:
    """A local data.test_split file must exist before the sweep starts (replicates read it last)."""
    local_sst2 = data["source"] == "sst2" and data.get("path") and Path(data["path"]).expanduser().is_dir()
    if data.get("test_split") and data["source"] == "sst2" and not local_sst2:
        raise ConfigError("data.test_split", data["test_split"], "null with the hub's SST-2",
                          "its test split is unlabelled; point data.path at a folder with a labelled test.jsonl")
    if data.get("test_split") and (data["source"] in ("jsonl", "csv", "parquet") or local_sst2):
        try:
            _local_files(data["source"], {**data, "eval_split": data["test_split"]})
        except ConfigError as exc:
            raise ConfigError("data.test_split", data["test_split"], exc.allowed, str(exc)) from None


def load_test(data: dict[str, Any], task_type: str) -> RawData:
    """The held-out split `data.test_split` in the place of the eval split, checked, capped
    (`data.max_test_samples`) and label-mapped exactly as the eval split is. Only reproduce
    replicates are scored on it: no trial is ever selected by it."""
    import datasets

    split = data.get("test_split")
    if not split:
        raise ConfigError("data.test_split", split, "the name of a held-out split (e.g. test)")
    as_eval = {**data, "eval_split": split, "max_eval_samples": data.get("max_test_samples")}
    if data["source"] == "demo":
        from trainer.data.demo_data import demo_test_split

        raw = load_raw({**as_eval, "demo_eval_size": 2}, task_type)
        test = datasets.Dataset.from_dict(demo_test_split(int(data.get("demo_test_size") or 300)))
        return RawData(raw.train, _cap(test, as_eval["max_eval_samples"]), raw.num_labels, raw.label_names)
    if data["source"] == "demo_chat":
        from trainer.data.demo_chat import demo_chat_test_split

        raw = load_raw({**as_eval, "demo_eval_size": 2}, task_type)
        test = as_split((m, None) for m in demo_chat_test_split(int(data.get("demo_test_size") or 40)))
        return RawData(raw.train, _cap(test, as_eval["max_eval_samples"]), None, None)
    return load_raw(as_eval, task_type)


def with_eval_rows(raw: RawData, path: str, data: dict[str, Any], task_type: str) -> RawData:
    """`raw` with its eval split replaced by the rows of a file (JSON lines, JSON or CSV by suffix),
    checked and label-mapped exactly as the trial's own eval split was: same columns, the label
    names learnt from the trial's data. A file without the label column gets placeholder labels
    (the caller then has predictions, not metrics)."""
    import datasets

    builder = "csv" if str(path).endswith(".csv") else "json"
    if task_type == "sft":  # conversations in the trial's data.format, checked row by row
        fmt = resolve_format(data, task_type)
        if builder == "json":
            conversations = to_conversations(read_jsonl(path), data, fmt, str(path))
        else:
            records = datasets.load_dataset(builder, data_files={"eval": str(path)})["eval"].to_list()
            conversations = to_conversations(records, data, fmt, str(path), from_arrow=True)
        return RawData(raw.train, as_split(conversations), None, None)
    rows = datasets.load_dataset(builder, data_files={"eval": str(path)})["eval"]
    _check_column(rows, "--input", data["text_column"], f"--input {path}")
    if task_type == "causal_lm" and data.get("completion_column"):
        _check_column(rows, "--input", data["completion_column"], f"--input {path}")
    label = data.get("label_column")
    if raw.num_labels is None or not label:
        return RawData(raw.train, rows, raw.num_labels, raw.label_names)
    if label not in rows.column_names:
        rows = rows.add_column(label, [0] * len(rows))
    elif rows.features[label].dtype == "string":
        index = {name: i for i, name in enumerate(raw.label_names or [])}
        unknown = sorted(set(rows[label]) - set(index))
        if unknown:
            raise ConfigError("--input", path, f"labels among the trial's ({', '.join(index)})", f"unknown labels: {unknown}")
        rows = rows.map(lambda b: {label: [index[v] for v in b[label]]}, batched=True)
    _check_labels(rows, label, raw.num_labels, f"--input {path}")
    return RawData(raw.train, rows, raw.num_labels, raw.label_names)
