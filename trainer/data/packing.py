"""Packing (`train.packing`): several encoded examples in one training row, none seeing another.

Rows are filled first-fit decreasing up to `train.max_seq_length` (longest example first, ties in
an order drawn from data_seed), so most rows are nearly full and a micro-batch of rows carries
little padding. Inside a row each example keeps its own position ids, restarting at 0, and no
attention mask is passed: transformers turns restarting position ids into a block-diagonal
causal mask for sdpa and eager (masking_utils.find_packed_sequence_indices), and flash-attention
reads them as varlen sequence boundaries when the micro-batch is one flattened row.

Each example's first label is -100 (the separator of transformers' DataCollatorWithFlattening,
which builds the rows): after the next-token shift the last token of one example would otherwise
learn to predict the first token of the next. Its own first label never counts in the unpacked
loss either, so a packed micro-batch has exactly the loss tokens of its examples, and the
token-exact loss under gradient accumulation holds unchanged.

`check_block_attention` runs once per trial on the loaded model and refuses packing where an
architecture (or a custom attention kernel) lets one example see another.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from trainer.errors import ConfigError

IGNORE_INDEX = -100
logger = logging.getLogger(__name__)


def first_fit_decreasing(lengths: Sequence[int], capacity: int, seed: int) -> list[list[int]]:
    """Bins of indices, each summing to at most `capacity`: the examples longest first (equal
    lengths in an order drawn from `seed`), each into the first bin with room. A max-tree over
    the bins' free room finds that bin in O(log n), so 100k examples pack in about a second."""
    import torch

    if any(n > capacity for n in lengths):
        raise ValueError(f"an example of {max(lengths)} tokens does not fit in a row of {capacity}")
    rank = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], rank[i]))
    size = 1
    while size < max(len(lengths), 1):
        size *= 2
    room = [0] * (2 * size)  # room[size + b]: free slots of bin b (capacity once opened); inner nodes: max
    for b in range(size):
        room[size + b] = capacity
    for node in range(size - 1, 0, -1):
        room[node] = max(room[2 * node], room[2 * node + 1])
    bins: list[list[int]] = []
    for i in order:
        node = 1
        while node < size:  # leftmost bin with room >= length (unopened bins have full capacity)
            node = 2 * node if room[2 * node] >= lengths[i] else 2 * node + 1
        b = node - size
        if b == len(bins):
            bins.append([])
        bins[b].append(i)
        room[node] -= lengths[i]
        node //= 2
        while node:
            room[node] = max(room[2 * node], room[2 * node + 1])
            node //= 2
    return bins


def pack_features(features: list[dict[str, Any]], max_len: int, seed: int) -> list[dict[str, Any]]:
    """Packed training rows: `input_ids`, `labels` (-100 at each example's first token) and
    `position_ids` (restarting per example) of the examples of one bin back to back, plus
    `num_examples` (how many it holds: the loop counts examples, not rows)."""
    from transformers import DataCollatorWithFlattening

    flatten = DataCollatorWithFlattening(return_tensors="np", separator_id=IGNORE_INDEX)
    rows = []
    for members in first_fit_decreasing([len(f["input_ids"]) for f in features], max_len, seed):
        parts = [{"input_ids": features[i]["input_ids"], "labels": features[i]["labels"]} for i in members]
        row = flatten(parts)
        rows.append({"input_ids": row["input_ids"][0].tolist(), "labels": row["labels"][0].tolist(),
                     "position_ids": row["position_ids"][0].tolist(), "num_examples": len(members)})
    filled = sum(len(r["input_ids"]) for r in rows) / (len(rows) * max_len) if rows else 0.0
    logger.info("packing: %d examples in %d rows of up to %d tokens (%.1f%% of the rows' slots filled)",
                len(features), len(rows), max_len, 100 * filled)
    return rows


def packed_collator(pad_token_id: int, flatten: bool) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """Tensors for a micro-batch of packed rows, with no attention mask (the position ids carry the
    boundaries). `flatten` (flash-attention): the rows end to end as one row of batch size 1, no
    padding at all (flash-attention's varlen path is taken for batch size 1 only). Otherwise the
    rows are right-padded to the longest; the padding is a sequence of its own (positions from 0,
    labels -100), so no real token attends to it."""
    import torch

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        if flatten:
            rows = [{k: [v for r in rows for v in r[k]] for k in ("input_ids", "labels", "position_ids")}]
        width = max(len(r["input_ids"]) for r in rows)
        ids, labels, positions = [], [], []
        for r in rows:
            pad = width - len(r["input_ids"])
            ids.append(r["input_ids"] + [pad_token_id] * pad)
            labels.append(r["labels"] + [IGNORE_INDEX] * pad)
            positions.append(r["position_ids"] + list(range(pad)))
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "position_ids": torch.tensor(positions)}

    return collate


def check_block_attention(model: Any, device: Any, flatten: bool, probe_len: int = 8) -> None:
    """ConfigError naming train.packing unless the model keeps packed examples apart.

    Two forward passes on one packed row [A, B] of random tokens, A redrawn in the second: B's
    logits must not move (nothing of A reaches B) and must match B run alone (its positions
    restart). Same shapes in the first comparison, so any leak shows far above rounding (a masked
    key contributes exactly 0); the second catches absolute position embeddings fed the row's
    offsets. A local generator: no global RNG draw."""
    import torch

    vocab = int(model.get_input_embeddings().weight.shape[0])
    gen = torch.Generator().manual_seed(0)
    a1, a2, b = (torch.randint(0, vocab, (probe_len,), generator=gen) for _ in range(3))
    collate = packed_collator(0, flatten)

    def logits_of_b(*parts: Any) -> Any:
        rows = [{"input_ids": [t for p in parts for t in p.tolist()], "labels": [IGNORE_INDEX] * probe_len * len(parts),
                 "position_ids": [i for p in parts for i in range(len(p))]}]
        batch = {k: v.to(device) for k, v in collate(rows).items() if k != "labels"}
        return model(**batch).logits[0, -probe_len:].float()

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            first, second, alone = logits_of_b(a1, b), logits_of_b(a2, b), logits_of_b(b)
    finally:
        model.train(was_training)
    scale = float(first.abs().max()) or 1.0
    leak = float((first - second).abs().max()) / scale
    shift = float((first - alone).abs().max()) / scale
    if leak > 1e-3 or shift > 0.25:  # shift: loose, as half-precision kernels differ by shape; a missed restart is far off
        raise ConfigError("train.packing", True, "false for this model and model.attn_implementation",
                          f"packed examples are not kept apart (B's logits move by {leak:.1%} of their scale when "
                          f"the example before it changes, and differ by {shift:.1%} from B alone): the attention in "
                          "use ignores restarting position ids")
