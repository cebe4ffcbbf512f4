"""Answer-level metrics (SQuAD normalisation) and batched greedy generation with left padding."""

from __future__ import annotations

import pytest

from trainer.evaluation.generation import answer_metrics, exact_match, generate_answers, normalize_answer, token_f1


def test_squad_normalisation_and_scores():
    assert normalize_answer("  The  Answer, is: 42! ") == "answer is 42"
    assert exact_match("The cat.", "cat") == 1.0
    assert exact_match("a dog", "cat") == 0.0
    assert token_f1("red green blue", "green blue yellow") == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    assert token_f1("a an the", "the") == 1.0  # both normalise to nothing
    metrics = answer_metrics(["7", "seven", "1 2 3"], ["7", "7", "1 2"])
    assert metrics["eval_exact_match"] == pytest.approx(1 / 3)
    assert metrics["eval_token_f1"] == pytest.approx((1 + 0 + 0.8) / 3)


def test_batched_generation_equals_one_at_a_time(tiny_llama_dir, torch_single_thread):
    """Prompts of different lengths in one batch: with left padding and its attention mask, every
    answer is the one the prompt gets alone (right padding would feed pad tokens before the answer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    torch.manual_seed(0)
    prompts = [tok(text, add_special_tokens=True)["input_ids"] for text in
               ("good", "the movie was good and fun", "bad film", "a b c d e f g h")]
    alone = [generate_answers(model, tok, [p], max_new_tokens=6, batch_size=1, device=torch.device("cpu"))[0]
             for p in prompts]
    batched = generate_answers(model, tok, prompts, max_new_tokens=6, batch_size=4, device=torch.device("cpu"))
    assert batched == alone
    assert any(answer for answer in alone), "the tiny model generated nothing at all"
    model.train()
    generate_answers(model, tok, prompts[:1], max_new_tokens=2, batch_size=1, device=torch.device("cpu"))
    assert model.training, "generation left the model in eval mode"


def test_max_new_tokens_must_be_positive(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with pytest.raises(ValueError, match="task.max_new_tokens"):
        generate_answers(model, tok, [[1, 2]], max_new_tokens=0, batch_size=1, device="cpu")
