"""The Train tab's instruction-tuning mode: the masked example, the answers table, the /train_instruct endpoint."""
import re

import pytest
import torch

from explorer.compute import training
from explorer.figures.training import answers_html, masked_tokens_html
from explorer.inputs import InputError
from gpt2core.text import tokenizer
from gpt2core.training.finetune import collate, encode_example, exact_match, format_prompt
from gpt2core.training.train import IGNORE_INDEX
from tests.conftest import plot_json


def test_masked_example_marks_only_the_response_as_trained():
    rec = training.instruct_data()[0][0]
    toks = training.masked_example(rec, pad_to=120)
    ex = encode_example(rec)
    assert len(toks) == 120 and [t.role for t in toks].count("padding") == 120 - len(ex.ids)
    assert "".join(t.text for t in toks[:len(ex.ids)]) == format_prompt(rec) + rec["output"] + tokenizer.EOT
    # What is highlighted is exactly what the loss trains: the tokens that are targets in collate().
    _, y = collate([ex])
    targets = y[0][y[0] != IGNORE_INDEX].tolist()
    trained = [tid for tid, t in zip(ex.ids, toks) if t.trained]
    assert trained == targets == list(ex.ids[ex.n_prompt:])
    assert {t.role for t in toks if t.trained} == {"response", "end"}
    assert {t.role for t in toks if not t.trained} == {"prompt", "padding"}


def test_masked_tokens_html_and_answers_html():
    toks = training.masked_example({"instruction": "Add <b>.", "input": "1 + 1", "output": "2"}, pad_to=70)
    page = masked_tokens_html(toks)
    n_trained = sum(t.trained for t in toks)
    assert page.count('class="tok-trained"') == n_trained == 2 and page.count('class="tok-ignored"') == 68
    assert f"(the response and its end token, {n_trained} tokens)" in page and "68 tokens" in page
    assert "<b>" not in page and "&lt;" in page                                    # token text is escaped
    rows = [{"instruction": "Add.", "input": "1 + 1", "expected": "2", "before": "x", "before_ok": False,
             "after": "2", "after_ok": True}]
    table = answers_html(rows, 0.0, 0.5, 24)
    assert "Exact match on 24 held-out records: <b>0%</b> before, <b>50%</b> after." in table
    assert table.count("✗") == 1 and table.count("✓") == 1
    waiting = answers_html([{**rows[0], "after": None, "after_ok": None}], 0.0, None, 24)
    assert "training…" in waiting and "✓" not in waiting


def test_instruct_data_and_bases():
    train, held = training.instruct_data()
    assert len(train) == training.INSTRUCT_TRAIN_RECORDS and len(held) == training.INSTRUCT_HELDOUT_RECORDS
    shown = held[:training.n_shown_answers()]
    assert len({r["instruction"] for r in shown}) == len(shown) == 6                # one of each task first
    assert not {(r["instruction"], r["input"]) for r in train} & {(r["instruction"], r["input"]) for r in held}
    keys = [k for _, k in training.instruct_base_choices()]
    assert keys[-1] == "fresh"
    with pytest.raises(InputError, match="Unknown starting model 'giant'"):
        training.instruct_base_model("giant")
    if "bundled" in keys:   # a copy of its own: training it cannot touch the shared model
        a, b = training.instruct_base_model("bundled"), training.instruct_base_model("bundled")
        assert a is not b and all(p.requires_grad for p in a.parameters())
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
        assert a.config.n_ctx == 128


@pytest.fixture(scope="module")
def tuned(client):
    return client.predict("fresh", 10, api_name="/train_instruct")


@pytest.mark.slow
def test_train_instruct_endpoint(tuned):
    example, curve, table, status = tuned
    assert 'class="tok-trained"' in example and "> Response</span>" in example     # one span per token
    fig = plot_json(curve)
    train, val = fig["data"]
    assert train["x"] == list(range(1, 11)) and val["x"] == [0, 10]
    assert val["y"][-1] < val["y"][0]                                               # the response loss fell
    assert "held-out records" in val["name"]
    assert "step 10 / 10" in status and "1,200 training records" in status
    rows = re.findall(r"<tr><td>", table)
    assert len(rows) == 6 and table.count("…") == 0                                # before and after filled
    before, after = map(float, re.search(r"<b>(\d+)%</b> before, <b>(\d+)%</b> after", table).groups())
    # The before figure is recomputed here: a fresh model (same seed) answering the same records.
    tuner = training.new_finetuner("fresh", 10)
    expected, _ = exact_match(tuner.model, tuner.heldout[:training.INSTRUCT_EVAL_RECORDS],
                              training.INSTRUCT_ANSWER_TOKENS)
    assert before == round(expected * 100)
    assert 0 <= after <= 100


@pytest.mark.parametrize("base,steps,message", [
    ("giant", 10, "Unknown starting model 'giant'. Choose one of: .*fresh"),
    (["fresh"], 10, "Unknown starting model"),
    ("fresh", 0, "must be between 10 and 300, got 0"),
    ("fresh", 301, "must be between 10 and 300, got 301"),
])
def test_train_instruct_bad_input_is_a_clean_error(client, base, steps, message):
    with pytest.raises(Exception, match=message):
        client.predict(base, steps, api_name="/train_instruct")
