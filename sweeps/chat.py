"""`python -m sweeps.chat`: talk to a trained trial, or score a file with it.

    python -m sweeps.chat --trial 3 --prompt "What is 2 + 3?"          # one answer
    python -m sweeps.chat --trial 3 --input eval.jsonl --output preds.jsonl
    python -m sweeps.chat --model exported/                              # interactive, in the terminal

The model is the trial's base loaded exactly as the trial loaded it (quantization included) with
the trial's adapter, and text is encoded by the trial's own config (its chat template, prompt
template, label names, max length). So scoring the eval split here reproduces the metric the trial
logged: classification models get label and probabilities, causal LMs a greedy answer. Only the
trial's config and adapter are read (an export folder is enough), never its training data.

`--input` writes exactly one line per input line, in order: a prompt longer than
train.max_seq_length loses its front (counted, printed at the end); a row that cannot be read or
rendered becomes `{"row": N, "error": ...}`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeps.export import EXIT_BAD_INPUT, BadInput, quiet_libraries


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sweeps.chat", description=__doc__.split("\n\n")[0])
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trial", type=int, help="trial number of --study (its adapter and config; default: the race "
                                                 "winner, else the best trial, as sweeps.export picks)")
    which.add_argument("--model", type=Path, help="a folder with config.yaml and adapter/ (sweeps.export output, or "
                                                  "a trial's MLflow artifacts)")
    p.add_argument("--study", help="study name (default: the latest one in --storage)")
    p.add_argument("--storage", help="Optuna storage URL or journal file (default: ./optuna-journal.log)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the study's)")
    p.add_argument("--prompt", help="one prompt: print the answer (or label) and exit")
    p.add_argument("--input", type=Path, help="JSON lines to score, in the trial's data format")
    p.add_argument("--output", type=Path, help="where --input's predictions go (JSON lines)")
    p.add_argument("--max-new-tokens", type=int, help="answer length cap (default: task.max_new_tokens, else 128)")
    p.add_argument("--batch-size", type=int, help="batch size for --input (default: the trial's train.batch_size)")
    args = p.parse_args(argv)
    if args.prompt is not None and args.input is not None:
        raise BadInput("--prompt", "give --prompt or --input, not both")
    if (args.input is None) != (args.output is None):
        raise BadInput("--output" if args.output is None else "--input", "--input and --output go together")
    if args.input is not None and not args.input.is_file():
        raise BadInput("--input", f"{args.input} is not a file")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise BadInput("--max-new-tokens", f"must be at least 1, got {args.max_new_tokens}")
    if args.batch_size is not None and args.batch_size < 1:
        raise BadInput("--batch-size", f"must be at least 1, got {args.batch_size}")
    return args


def trial_files(args: argparse.Namespace, scratch: Path) -> tuple[Path, Any, str]:
    """Adapter folder, resolved trial config, and where they came from."""
    from omegaconf import OmegaConf

    if args.model is not None:
        folder = args.model.expanduser().resolve()
        adapter = folder / "adapter" if (folder / "adapter").is_dir() else folder
        config = next((p for p in (folder / "config.yaml", folder.parent / "config.yaml") if p.is_file()), None)
        if not (adapter / "adapter_config.json").is_file() or config is None:
            raise BadInput("--model", f"{folder} needs config.yaml and an adapter/ folder (adapter_config.json); "
                                      "python -m sweeps.export writes both")
        return adapter, OmegaConf.load(config), str(folder)
    from sweeps.export import fetch, find_trial

    source = find_trial(args.storage, args.study, args.trial, args.tracking_uri)
    adapter, config, _ = fetch(source, scratch)
    return adapter, config, f"trial {source.trial.number} of {source.study.study_name}"


@dataclass
class Session:
    """The trial's model and how it turns text into inputs."""

    models: Any  # sweeps.export.Models: tokenizer and base, loaded as in the trial
    model: Any
    cfg: Any
    max_new_tokens: int

    @property
    def task_type(self) -> str:
        return self.models.type

    def answer(self, text: str, history: list[dict[str, str]] | None = None) -> str:
        """One reply (causal LM; `history`: earlier turns of this chat, extended in place) or
        `label (probabilities)` (classification)."""
        if self.task_type == "classification":
            label, probs = self.classify([text])[0]
            return f"{label}  " + "  ".join(f"{name}={p:.4f}" for name, p in probs.items())
        from trainer.evaluation.generation import generate_answers

        turns = (history if history is not None else []) + [{"role": "user", "content": text}]
        prompt = self.prompt_ids(turns)
        reply = generate_answers(self.model, self.models.tok, [prompt], self.max_new_tokens, 1, self.models.device,
                                 end_of_turn=self.end_of_turn())[0]
        if history is not None:
            history += [turns[-1], {"role": "assistant", "content": reply}]
        return reply

    def end_of_turn(self) -> str:
        from trainer.data.chat_templates import end_of_turn

        return end_of_turn(self.models.tok) if self.task_type == "sft" else ""

    def prompt_ids(self, turns: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        """The chat so far rendered with the trial's chat template, its tools and its generation
        prompt (as the trial's eval prompts were: the text, tokenized without extra special tokens;
        no thinking where the trial stripped reasoning), else the last user turn in the trial's
        prompt template."""
        from trainer.config import get

        tok, task = self.models.tok, get(self.cfg, "task")
        if self.task_type == "sft":
            thinking = {"enable_thinking": False} if task.get("reasoning") == "strip" else {}
            text = tok.apply_chat_template(turns, tools=tools, add_generation_prompt=True, tokenize=False, **thinking)
            return tok(text, add_special_tokens=False)["input_ids"]
        template = task.get("prompt_template") or "{text}"
        return tok(template.format(text=turns[-1]["content"]), add_special_tokens=True)["input_ids"]

    def classify(self, texts: list[str]) -> list[tuple[str, dict[str, float]]]:
        import torch

        from trainer.config import get

        tok, names = self.models.tok, self.label_names()
        enc = tok(texts, truncation=True, max_length=get(self.cfg, "train.max_seq_length"), padding=True,
                  return_tensors="pt")
        with torch.inference_mode():
            probs = torch.softmax(self.model(**{k: v.to(self.models.device) for k, v in enc.items()}).logits.float(), -1)
        return [(names[int(row.argmax())], {n: float(p) for n, p in zip(names, row.tolist())}) for row in probs.cpu()]

    def label_names(self) -> list[str]:
        names = self.models.label_names
        return list(names) if names else [str(i) for i in range(self.models.num_labels or 0)]


def load(args: argparse.Namespace, scratch: Path) -> Session:
    from trainer.config import get

    from sweeps.export import Models

    adapter, cfg, _ = trial_files(args, scratch)
    models = Models(cfg, adapter)
    max_new = args.max_new_tokens or get(cfg, "task.max_new_tokens") or 128
    return Session(models, models.with_adapter(adapter), cfg, int(max_new))


def score_file(session: Session, path: Path, out: Path, batch_size: int | None) -> dict[str, float]:
    """Predict every row of `path` the way the trial's eval did, write them to `out` (JSON lines,
    one per input row: a prediction, or the reason the row cannot be used), and return the trial's
    eval metrics on the usable rows when they carry references."""
    if session.task_type == "sft":
        return score_conversations(session, path, out, batch_size)
    import datasets

    from trainer.config import get
    from trainer.data.splits import RawData, with_eval_rows
    from trainer.data.encoding import encode, make_collator
    from trainer.evaluation.scoring import evaluate, predictions
    from trainer.evaluation.generation import answer_metrics
    from trainer.training.loop import autocast_for

    cfg, models = session.cfg, session.models
    data_cfg, task = get(cfg, "data"), get(cfg, "task")
    checked = checked_rows(session, input_rows(path))
    good = [record for _, record in checked if isinstance(record, dict)]
    results: list[dict[str, Any]] = [{"row": n, "error": r} for n, r in checked if isinstance(r, str)]
    metrics: dict[str, float] = {}
    if good:
        usable = out.with_name(out.name + ".rows.jsonl")
        write_jsonl(usable, good)
        try:
            labels = RawData(datasets.Dataset.from_dict({}), None, models.num_labels, models.label_names)
            raw = with_eval_rows(labels, str(usable), data_cfg, models.type)  # the trial's label space, not its data
        finally:
            usable.unlink()
        raw.train = raw.eval.select(range(1))  # encode() wants a train split: this file's first row
        data = encode(raw, models.tok, data_cfg, task, get(cfg, "train.max_seq_length"))
        collate = make_collator(models.tok, models.type)
        bs = batch_size or int(get(cfg, "train.batch_size"))
        autocast = autocast_for(models.device, get(cfg, "train.precision"))
        scoring = task.get("label_scoring", "mean")
        rows = predictions(session.model, data, collate, models.type, bs, models.device, autocast, models.tok,
                           session.max_new_tokens, scoring)
        results += [{"row": n, **row} for (n, _), row in zip(((n, r) for n, r in checked if isinstance(r, dict)), rows)]
        if models.type == "classification" and data_cfg["label_column"] in good[0]:
            metrics = evaluate(session.model, data, collate, models.type, bs, models.device, autocast)
        elif models.type != "classification":
            metrics = evaluate(session.model, data, collate, models.type, bs, models.device, autocast, scoring)
            if not data.candidates:
                metrics.update(answer_metrics([r["answer"] for r in rows], [r["reference"] for r in rows]))
    results.sort(key=lambda r: r["row"])
    write_jsonl(out, results)
    long = sum(too_long(session, r) for r in good)
    print(f"rows: {len(results)}; longer than train.max_seq_length={get(cfg, 'train.max_seq_length')}, truncated as "
          f"in the trial: {long}; rows with errors: {len(results) - len(good)}")
    return metrics


def checked_rows(session: Session, rows: list[tuple[int, Any]]) -> list[tuple[int, dict[str, Any] | str]]:
    """(row number, the record ready to encode, or why it cannot be): the trial's text (and
    completion) columns as strings; a label among the trial's. Labels are scored only when the
    first usable row has one (else every row's label is dropped: predictions only)."""
    from trainer.config import get

    data = get(session.cfg, "data")
    text, completion, label = data["text_column"], data.get("completion_column"), data.get("label_column")
    names, count = session.models.label_names, session.models.num_labels
    needs = [text] + ([completion] if session.task_type == "causal_lm" and completion else [])
    scored: bool | None = None
    out: list[tuple[int, dict[str, Any] | str]] = []
    for number, record in rows:
        if isinstance(record, Exception) or not isinstance(record, dict):
            out.append((number, str(record) if isinstance(record, Exception) else
                        f"a JSON object is required, got {type(record).__name__}"))
            continue
        bad = next((f"field {c!r}: a string is required, got {record.get(c)!r:.60}" for c in needs
                    if not isinstance(record.get(c), str)), None)
        uses_label = bool(label) and count is not None and not (session.task_type == "causal_lm" and completion)
        if bad is None and uses_label:
            scored = (label in record) if scored is None else scored
            value = record.get(label)
            if not scored:
                record = {k: v for k, v in record.items() if k != label}
            elif value is None:
                bad = f"field {label!r}: missing (the rows above carry labels)"
            elif isinstance(value, str) and value not in (names or []):
                bad = f"field {label!r}: {value!r} is not one of the trial's labels ({', '.join(names or [])})"
            elif isinstance(value, bool) or (not isinstance(value, str) and not (isinstance(value, int) and 0 <= value < count)):
                bad = f"field {label!r}: a label id 0..{count - 1} or name is required, got {value!r:.60}"
        elif bad is None and label and label in record and session.task_type == "classification":
            record = {k: v for k, v in record.items() if k != label}  # no label space known: predictions only
        out.append((number, bad if bad is not None else record))
    return out


def too_long(session: Session, record: dict[str, Any]) -> bool:
    """The row's tokens (prompt and completion for a causal LM) exceed train.max_seq_length: the
    encoder keeps the end and cuts the front of the prompt (the end of a classifier's text)."""
    from trainer.config import get

    tok, data, task = session.models.tok, get(session.cfg, "data"), get(session.cfg, "task")
    text = record[data["text_column"]]
    if session.task_type == "causal_lm":
        text = (task.get("prompt_template") or "{text}").format(text=text) + str(record.get(data.get("completion_column") or "", ""))
    return len(tok(text)["input_ids"]) > int(get(session.cfg, "train.max_seq_length"))


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def input_rows(path: Path) -> list[tuple[int, Any]]:
    """(row number, object or the reason it is unusable) for every row: each line of a JSON-lines
    file (a blank line included, so output lines match input lines), each element of a JSON
    array, each row of a CSV."""
    if path.suffix == ".csv":
        import datasets

        records = datasets.load_dataset("csv", data_files={"eval": str(path)})["eval"].to_list()
        return list(enumerate(records, 1))
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        return list(enumerate(json.loads(text), 1))
    rows: list[tuple[int, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            rows.append((number, json.loads(line) if line.strip() else ValueError("empty line")))
        except json.JSONDecodeError as exc:
            rows.append((number, ValueError(f"not valid JSON: {exc.msg}")))
    return rows


@dataclass
class ChatRow:
    """One --input row of chat data, ready to answer."""

    row: int
    prompt: list[int]
    reference: str | None = None
    feature: dict[str, Any] | None = None  # the trial's encoding (input ids, labels): the row's loss
    truncated: bool = False


def chat_row(session: Session, row: int, record: Any, path: Path) -> ChatRow:
    """The row encoded as the trial's eval encodes a conversation (its prompt, reference and loss
    features) when it ends with an assistant turn and fits; otherwise the conversation so far as a
    prompt with the generation prompt, its front cut to train.max_seq_length."""

    from trainer.config import get
    from trainer.data.conversations import as_split, resolve_format, to_conversations
    from trainer.data.splits import RawData
    from trainer.data.encoding import encode
    from trainer.errors import ConfigError

    if isinstance(record, Exception):
        raise record
    if not isinstance(record, dict):
        raise ValueError(f"a JSON object is required, got {type(record).__name__}")
    data_cfg, task, max_len = get(session.cfg, "data"), get(session.cfg, "task"), int(get(session.cfg, "train.max_seq_length"))
    fmt = resolve_format(data_cfg, "sft")
    record, asks = with_answer_slot(record, data_cfg, fmt)
    messages, tools = to_conversations([{**record, "__row__": row}], data_cfg, fmt, str(path))[0]
    reference = None
    if asks:  # a question to answer: the data reader's checks passed, the placeholder goes
        messages = messages[:-1]
    elif messages and messages[-1]["role"] == "assistant":
        one = as_split([(messages, tools)])
        try:
            enc = encode(RawData(one, one, None, None), session.models.tok, data_cfg, task, max_len)
            split = enc.eval
            return ChatRow(row, list(split.prompts[0]), split.references[0], split.features[0],
                           bool(enc.stats.get("eval_rows_truncated")))
        except ConfigError:  # longer than the trial's limit even after its truncation: answer it anyway
            pass
        reference, messages = (messages[-1]["content"] or "").strip(), messages[:-1]
    ids = session.prompt_ids(messages, tools)
    if len(ids) <= max_len:
        return ChatRow(row, ids, reference)
    bos = session.models.tok.bos_token_id
    keep_bos = bos is not None and ids[0] == bos
    return ChatRow(row, ([bos] if keep_bos else []) + ids[len(ids) - max_len + int(keep_bos):], reference,
                   truncated=True)


ANSWER_SLOT = "(to be answered)"


def with_answer_slot(record: dict[str, Any], data: dict[str, Any], fmt: str) -> tuple[dict[str, Any], bool]:
    """A row that asks without answering (its turns end with the user, or alpaca / prompt_completion
    without the answer column) completed with a placeholder answer, so it passes the data reader's
    row checks like a training row; True when one was added."""
    from trainer.data.conversations import alpaca_columns, messages_column

    if fmt in ("messages", "sharegpt"):
        column = messages_column(data, fmt)
        turns = record.get(column)
        speaker, text, answer = ("role", "content", "assistant") if fmt == "messages" else ("from", "value", "gpt")
        if isinstance(turns, list) and turns and isinstance(turns[-1], dict) and turns[-1].get(speaker) != answer:
            return {**record, column: [*turns, {speaker: answer, text: ANSWER_SLOT}]}, True
        return record, False
    column = alpaca_columns(data)["output"] if fmt == "alpaca" else data.get("completion_column")
    if column and not record.get(column):
        return {**record, column: ANSWER_SLOT}, True
    return record, False


def score_conversations(session: Session, path: Path, out: Path, batch_size: int | None) -> dict[str, float]:
    """Greedy answers for chat rows, one output line per input line (see the module doc); the
    trial's metrics (eval_loss, exact_match, token_f1) over the rows that carry an answer."""
    from trainer.config import get
    from trainer.data.encoding import EncodedData, EncodedSplit, make_collator
    from trainer.evaluation.scoring import evaluate
    from trainer.evaluation.generation import answer_metrics, generate_answers
    from trainer.training.loop import autocast_for

    cfg, models = session.cfg, session.models
    results: list[dict[str, Any]] = []
    ready: list[ChatRow] = []
    for row, record in input_rows(path):
        try:
            ready.append(chat_row(session, row, record, path))
            results.append({})
        except Exception as exc:  # noqa: BLE001 - a bad row is reported in its place, the others still answered
            results.append({"row": row, "error": str(exc)})
    bs = batch_size or int(get(cfg, "train.batch_size"))
    autocast = autocast_for(models.device, get(cfg, "train.precision"))
    answers = generate_answers(session.model, models.tok, [r.prompt for r in ready], session.max_new_tokens, bs,
                               models.device, autocast, session.end_of_turn()) if ready else []
    slots = iter(i for i, r in enumerate(results) if not r)
    for item, answer in zip(ready, answers):
        record = {"row": item.row, "prompt": models.tok.decode(item.prompt, skip_special_tokens=False),
                  "answer": answer, **({"reference": item.reference} if item.reference is not None else {})}
        results[next(slots)] = record | ({"prompt_truncated": True} if item.truncated else {})
    write_jsonl(out, results)
    truncated, errors = sum(r.truncated for r in ready), sum("error" in r for r in results)
    print(f"rows: {len(results)}; prompts truncated to train.max_seq_length={get(cfg, 'train.max_seq_length')} "
          f"from the left: {truncated}; rows with errors: {errors}")
    metrics: dict[str, float] = {}
    features = [r.feature for r in ready if r.feature is not None]
    if features:
        data = EncodedData(EncodedSplit([]), EncodedSplit(features), None, None)
        metrics = evaluate(session.model, data, make_collator(models.tok, "sft"), "sft", bs, models.device, autocast)
    scored = [(a, r.reference) for r, a in zip(ready, answers) if r.reference is not None]
    if scored:
        metrics.update(answer_metrics([a for a, _ in scored], [ref for _, ref in scored]))
    return metrics


def interactive(session: Session) -> None:
    print(f"chatting with the trial's model ({session.task_type}); an empty line or Ctrl-D quits")
    history: list[dict[str, str]] | None = [] if session.task_type == "sft" else None
    while True:
        try:
            text = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not text:
            return
        print(f"model> {session.answer(text, history)}")


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="lora-chat-") as scratch:
        try:
            session = load(args, Path(scratch))
        except BadInput as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if args.prompt is not None:
            print(session.answer(args.prompt))
        elif args.input is not None:
            metrics = score_file(session, args.input, args.output, args.batch_size)
            print(f"wrote {args.output}")
            for name, value in sorted(metrics.items()):
                print(f"{name} = {value!r}")
        else:
            interactive(session)
    return 0


if __name__ == "__main__":
    sys.exit(main())
