"""Gradient accumulation takes the step a big batch takes: the loss of an optimizer step is the
mean over all its loss tokens (causal LM) or examples (classification), however it is split
into micro-batches."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import WORDS, compose_cfg

from trainer import RecordingReporter, run_trial

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# dropout off and no clipping: the only difference between the two splits is the normalisation
EXACT = ["lora.lora_dropout=0", "train.max_grad_norm=0", "train.learning_rate=1e-3", "train.warmup_ratio=0",
         "train.max_steps=2", "train.eval_every_steps=0", "train.log_every_steps=1", "train.save_adapter=false",
         "lora.target_modules=all_linear"]


def write_prompt_completion(folder: Path, n: int, seed: int = 0) -> Path:
    """Rows with 1-8 word prompts and 1-8 word completions (so loss-token counts vary a lot)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", n), ("validation", 8)):
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for _ in range(rows):
                prompt = " ".join(rng.choices(WORDS, k=rng.randint(1, 8)))
                completion = " ".join(rng.choices(WORDS, k=rng.randint(1, 8)))
                f.write(json.dumps({"prompt": prompt, "completion": " " + completion}) + "\n")
    return folder


class GradientTap:
    """Records every trainable parameter's gradient right before each optimizer step (a torch
    global optimizer hook: it observes the loop, it changes nothing)."""

    def __enter__(self) -> list[list]:
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        self.steps: list[list] = []
        self.handle = register_optimizer_step_pre_hook(
            lambda opt, args, kwargs: self.steps.append(
                [p.grad.detach().clone() for g in opt.param_groups for p in g["params"] if p.grad is not None]))
        return self.steps

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def run_split(cfg_overrides: list[str], batch_size: int, accum: int) -> tuple[list[list], list[dict]]:
    reporter = RecordingReporter()
    cfg = compose_cfg([*cfg_overrides, *EXACT, f"train.batch_size={batch_size}",
                       f"train.gradient_accumulation_steps={accum}"])
    with GradientTap() as grads:
        run_trial(cfg, reporter)
    return grads, [metrics for _, metrics in reporter.logged]


def assert_same_steps(a: tuple[list[list], list[dict]], b: tuple[list[list], list[dict]]) -> None:
    import torch

    (grads_a, logs_a), (grads_b, logs_b) = a, b
    assert len(grads_a) == len(grads_b) == 2
    for step_a, step_b in zip(grads_a, grads_b):
        assert len(step_a) == len(step_b) and any(g.abs().sum() > 0 for g in step_a)
        for ga, gb in zip(step_a, step_b):
            torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-7)
    for la, lb in zip(logs_a, logs_b):
        assert la["train_loss"] == pytest.approx(lb["train_loss"], rel=1e-6)
        assert la["grad_norm"] == pytest.approx(lb["grad_norm"], rel=1e-5)


@pytest.mark.parametrize("quant", ["none", "4bit"])
def test_causal_lm_accumulated_step_equals_big_batch_step(tiny_llama_dir: Path, tmp_path: Path, quant: str) -> None:
    data = write_prompt_completion(tmp_path / "data", 16)
    base = [f"model.name_or_path={tiny_llama_dir}", "task=causal_lm", "data=jsonl", f"data.path={data}",
            "data.text_column=prompt", "data.completion_column=completion", "data.label_column=null",
            f"quant={quant}", "train.max_seq_length=32"]
    accumulated = run_split(base, 2, 4)
    big = run_split(base, 8, 1)
    assert_same_steps(accumulated, big)


def test_logged_train_loss_is_the_token_mean_of_the_step(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """Step 1 runs on the untouched base (LoRA B starts at zero), so its logged loss must be the
    sum of the completion tokens' NLL over the 8 rows divided by their number of tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_prompt_completion(tmp_path / "data", 8)
    base = [f"model.name_or_path={tiny_llama_dir}", "task=causal_lm", "data=jsonl", f"data.path={data}",
            "data.text_column=prompt", "data.completion_column=completion", "data.label_column=null",
            "quant=none", "train.max_seq_length=32"]
    _, logs = run_split(base, 2, 4)

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    nll, count = 0.0, 0
    for line in (data / "train.jsonl").read_text().splitlines():
        row = json.loads(line)
        prompt = tok(compose_cfg(base).task.prompt_template.format(text=row["prompt"]))["input_ids"]
        ids = prompt + tok(row["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        labels = torch.tensor([[-100] * len(prompt) + ids[len(prompt):]])
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[:, :-1]
        nll += torch.nn.functional.cross_entropy(logits[0], labels[0, 1:], reduction="sum").item()
        count += int((labels[0, 1:] != -100).sum())
    assert logs[0]["train_loss"] == pytest.approx(nll / count, rel=1e-5)


def test_classification_accumulated_step_weighs_every_example_once(tiny_llama_dir: Path) -> None:
    """10 examples as micro-batches of 4, 4 and 2 take the step one batch of 10 takes (the short
    micro-batch does not count as much as a full one)."""
    base = [f"model.name_or_path={tiny_llama_dir}", "task=classification", "quant=none", "data.demo_train_size=10",
            "data.demo_eval_size=4", "train.max_seq_length=32"]
    assert_same_steps(run_split(base, 4, 3), run_split(base, 10, 1))
