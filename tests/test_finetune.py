"""gpt2core.training.finetune and gpt2core.training.instruct_data: the Alpaca template, the loss mask, exact match, the data."""
import json
import re

import pytest
import torch
import torch.nn.functional as F

from gpt2core import GPT2, get_config
from gpt2core.text import tokenizer
from gpt2core.training.finetune import (FineTuner, answer, collate, encode_example, exact_match, format_prompt, main,
                               masked_loss, read_jsonl)
from gpt2core.training.instruct_data import TASKS, make_split, write_jsonl
from gpt2core.training.train import IGNORE_INDEX, SummedLoss, TrainSettings

REC = {"instruction": "Add the two numbers.", "input": "2 + 3", "output": "5"}
REC_NO_INPUT = {"instruction": "Name a colour.", "input": "", "output": "Deep red"}


def small(seed=0):
    torch.manual_seed(seed)
    return GPT2(get_config("tiny", n_layer=1, n_embd=16, n_head=2, n_ctx=96, dropout=0.0))


def test_alpaca_template():
    assert format_prompt(REC) == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd the two numbers.\n\n### Input:\n2 + 3\n\n### Response:\n")
    assert format_prompt(REC_NO_INPUT) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nName a colour.\n\n### Response:\n")
    ex = encode_example(REC)
    assert list(ex.ids) == tokenizer.encode(format_prompt(REC)) + tokenizer.encode("5") + [tokenizer.EOT_ID]
    assert ex.n_prompt == len(tokenizer.encode(format_prompt(REC))) and ex.n_response == 2


def test_mask_ignores_prompt_and_padding():
    a, b = encode_example(REC), encode_example(REC_NO_INPUT)
    x, y = collate([a, b])
    T = max(len(a.ids), len(b.ids)) - 1
    assert x.shape == y.shape == (2, T)
    for row, ex in enumerate((a, b)):
        n = len(ex.ids)
        assert x[row, :n - 1].tolist() == list(ex.ids[:-1])
        assert (x[row, n - 1:] == tokenizer.EOT_ID).all()                       # right padding
        trained = (y[row] != IGNORE_INDEX).nonzero().flatten().tolist()
        assert trained == list(range(ex.n_prompt - 1, n - 1))                   # response positions only
        assert y[row, trained].tolist() == list(ex.ids[ex.n_prompt:])           # its tokens and <|endoftext|>
        assert tokenizer.decode(y[row, trained].tolist()) == \
            {0: "5", 1: "Deep red"}[row] + tokenizer.EOT


def test_loss_is_the_mean_over_response_tokens_only():
    model = small().eval()
    examples = [encode_example(REC), encode_example(REC_NO_INPUT)]
    x, y = collate(examples)
    with torch.no_grad():
        logp = F.log_softmax(model(x), -1)                                      # (B, T, V)
    by_hand = []
    for i, ex in enumerate(examples):   # straight from the ids, not from y
        for t in range(ex.n_prompt - 1, len(ex.ids) - 1):
            by_hand.append(-float(logp[i, t, ex.ids[t + 1]]))
    expected = sum(by_hand) / len(by_hand)
    assert len(by_hand) == 2 + 3                                                # "5" + EOT, "Deep red" + EOT
    with torch.no_grad():
        assert float(SummedLoss(model)(x, y)) / len(by_hand) == pytest.approx(expected, rel=1e-5)
    assert masked_loss(model, examples, batch_size=1) == pytest.approx(expected, rel=1e-5)
    # A step's logged loss is the same mean over its batch's response tokens.
    tuner = FineTuner.from_records(small(), [REC, REC_NO_INPUT], [REC],
                                   TrainSettings(steps=1, batch_size=3, warmup_steps=1, seed=4))
    (bx, by), = tuner.micro_batches()[0]
    with torch.no_grad():
        lp = F.log_softmax(tuner.model(bx), -1)
    keep = by != IGNORE_INDEX
    manual = -lp[keep].gather(-1, by[keep].unsqueeze(-1)).mean()
    assert tuner.train_step() == pytest.approx(float(manual), rel=1e-5)


def test_finetune_grad_accum_equals_the_big_batch():
    train, held = make_split(60, 6, seed=1)
    losses = {}
    for batch, accum in ((4, 1), (1, 4)):
        tuner = FineTuner.from_records(small(seed=2), train, held,
                                       TrainSettings(steps=3, batch_size=batch, grad_accum=accum, lr=3e-3,
                                                     warmup_steps=1, seed=5))
        losses[batch] = [tuner.train_step() for _ in range(3)]
    # Records differ in length, so this holds only because the loss is summed over tokens, not batches.
    assert losses[1] == pytest.approx(losses[4], rel=1e-5)


def test_exact_match_compares_stripped_greedy_answers():
    model = small(seed=3)
    got = answer(model, REC, max_new_tokens=4)
    assert got == answer(model, REC, max_new_tokens=4)                          # greedy: reproducible
    right = {**REC, "output": f"  {got}\n"}                                     # the same, spaces aside
    wrong = {**REC, "output": got + "x"}
    score, answers = exact_match(model, [right, wrong, right], max_new_tokens=4)
    assert score == pytest.approx(2 / 3)
    assert [a["correct"] for a in answers] == [True, False, True] and answers[1]["answer"] == got


def expected_output(instruction: str, text: str) -> str:
    """Each task's answer, worked out again from the input alone."""
    if instruction.startswith("Reverse"):
        return " ".join(text.split()[::-1])
    if instruction.startswith("Write the words in capital"):
        return text.upper()
    if instruction.startswith("How many"):
        return str(len(text.split(", ")))
    if instruction.startswith("What number comes next"):
        a, b, c, d = map(int, text.split(", "))
        assert b - a == c - b == d - c > 0
        return str(d + (d - c))
    if instruction.startswith("Sort"):
        return " ".join(str(n) for n in sorted(int(t) for t in text.split()))
    if instruction.startswith("Add"):
        a, b = map(int, re.fullmatch(r"(\d+) \+ (\d+)", text).groups())
        return str(a + b)
    raise AssertionError(f"unknown instruction {instruction!r}")


def test_generated_answers_are_right_and_the_split_is_clean(tmp_path):
    train, held = make_split(3000, 300, seed=0)
    assert len(train) == 3000 and len(held) == 300
    for rec in train + held:
        assert rec["output"] == expected_output(rec["instruction"], rec["input"]), rec
    assert len({r["instruction"] for r in train}) == len(TASKS) == 6
    counts = {}
    for r in train:
        counts[r["instruction"]] = counts.get(r["instruction"], 0) + 1
    assert set(counts.values()) == {500}                                        # every task its share
    keys = {(r["instruction"], r["input"]) for r in train}
    assert len(keys) == 3000 and not keys & {(r["instruction"], r["input"]) for r in held}
    assert make_split(3000, 300, seed=0) == (train, held) != make_split(3000, 300, seed=1)
    path = write_jsonl(held, tmp_path / "h.jsonl")
    assert read_jsonl(path) == held and path.stat().st_size < 100_000
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "output": "y"}\n{"output": 3}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected"):
        read_jsonl(bad)


def test_finetune_cli_reports_exact_match_before_and_after(tmp_path):
    train, held = make_split(60, 4, seed=2)
    write_jsonl(train, tmp_path / "train.jsonl")
    write_jsonl(held, tmp_path / "held.jsonl")
    out = tmp_path / "run"
    assert main(["--data", str(tmp_path / "train.jsonl"), "--heldout", str(tmp_path / "held.jsonl"),
                 "--out", str(out), "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--n-ctx", "96",
                 "--steps", "3", "--batch-size", "2", "--eval-every", "3", "--eval-records", "2", "--warmup", "1",
                 "--device", "cpu", "--threads", "1"]) == 0
    doc = json.loads((out / "config.json").read_text())
    log = json.loads((out / "log.json").read_text())
    assert [e["step"] for e in log["eval"]] == [0, 3] and len(log["train"]) == 3
    assert doc["exact_match"] == {"before": log["eval"][0]["exact_match"], "after": log["eval"][-1]["exact_match"],
                                  "records": 2}
    assert doc["data"]["train_records"] == 60 and doc["run"]["effective_batch"] == 2
    card = (out / "README.md").read_text()
    assert f"{log['eval'][0]['exact_match']:.1%} before" in card and "python -m gpt2core.training.finetune --data" in card
    assert (out / "loss.png").stat().st_size > 5_000
