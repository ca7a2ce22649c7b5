"""The Train tab: compute helpers, the loss-curve figure, and the train / train_use endpoints."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from explorer.compute import training
from explorer.figures.training import loss_curve
from explorer.inputs import InputError
from explorer.tabs.train_tab import DEMO_TEXT
from gpt2core.text import tokenizer
from tests.conftest import plot_json



# ---- figure -------------------------------------------------------------------------------------

def test_loss_curve_traces_and_labels():
    fig = loss_curve([1, 2, 3], [10.123456, 9.5, float("nan")], [0, 3], [10.8, 8.25], total_steps=50,
                     baseline=math.log(50257))
    train, val = fig.data
    assert train.type == val.type == "scatter"
    assert train.mode == "lines" and val.mode == "lines+markers"
    assert list(train.x) == [1, 2, 3] and list(train.y) == [10.1235, 9.5, None]   # rounded, NaN dropped
    assert list(val.x) == [0, 3] and list(val.y) == [10.8, 8.25]
    assert list(val.customdata) == [round(math.exp(10.8), 1), round(math.exp(8.25), 1)]   # perplexity
    assert "training loss" in train.name and "validation" in val.name
    assert list(fig.layout.xaxis.range) == [0, 50]
    assert "step" in fig.layout.xaxis.title.text and "loss" in fig.layout.yaxis.title.text
    (line,) = fig.layout.shapes
    assert line.y0 == line.y1 == round(math.log(50257), 4)
    assert "10.82" in fig.layout.annotations[0].text
    assert "8.25" in fig.layout.title.text


def test_loss_curve_empty_and_small():
    fig = loss_curve([], [], [], [])
    assert len(fig.data) == 2 and not fig.layout.shapes
    assert fig.layout.title.text == "Loss while training"
    steps = list(range(1, training.MAX_STEPS + 1))
    big = loss_curve(steps, [10 - s / 100 for s in steps], steps[::60], [9.0] * 5, total_steps=300, baseline=10.8)
    assert len(big.to_json()) < 20_000


# ---- compute ------------------------------------------------------------------------------------

def test_presets_are_tiny_and_named():
    assert [k for _, k in training.preset_choices()] == list(training.PRESETS)
    nano = training.get_preset("nano")
    assert nano.label.startswith("nano: 1 layer, d=32, 2 heads, ctx 32")
    cfg = nano.config()
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_ctx, cfg.dropout) == (1, 32, 2, 32, 0.0)
    for p in training.PRESETS.values():
        assert p.n_layer <= 2 and p.n_embd <= 64 and p.n_ctx <= 64
    with pytest.raises(InputError, match="Unknown model size 'huge'. Choose one of: nano, micro"):
        training.get_preset("huge")
    with pytest.raises(InputError, match="Unknown model size"):
        training.get_preset(None)


def test_prepare_text_checks_and_cuts():
    nano = training.get_preset("nano")
    with pytest.raises(InputError, match="empty"):
        training.prepare_text("  \n ", nano)
    with pytest.raises(InputError, match="empty"):
        training.prepare_text(None, nano)
    with pytest.raises(InputError, match=r"has 3 tokens.*at least 128 tokens"):
        training.prepare_text("one two three", nano)
    data = training.prepare_text(DEMO_TEXT, nano)
    assert data.ids == tokenizer.encode(DEMO_TEXT) and not data.notices
    cut = training.prepare_text(DEMO_TEXT, nano, max_chars=1000)
    assert cut.text == DEMO_TEXT[:1000] and "1,000 characters" in cut.notices[0]


def test_read_text_file_replaces_bad_bytes_and_reads_a_bounded_amount(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"caf\xc3\xa9 \xff\xfe ok " + b"x" * 100)
    text = training.read_text_file(path, max_chars=50)
    assert text.startswith("café \ufffd\ufffd ok ") and len(text) == 51
    with pytest.raises(InputError, match="Could not read the uploaded file"):
        training.read_text_file(tmp_path)   # a folder, not a file


def test_demo_text_size_and_sample_prompt():
    assert 3_000 <= len(DEMO_TEXT.encode()) <= 6_000
    assert training.sample_prompt(DEMO_TEXT) == " ".join(DEMO_TEXT.split()[:2])
    assert training.sample_prompt("   ") == "The"


def test_settings_follow_the_preset_and_steps():
    micro = training.get_preset("micro")
    s = training.make_settings(micro, 300, "The")
    assert (s.steps, s.batch_size, s.lr, s.sample_prompt) == (300, micro.batch_size, micro.lr, "The")
    assert s.eval_every == 60 and s.warmup_steps == 30 and s.min_lr < s.lr
    assert training.make_settings(micro, 10, "The").eval_every == 10


def test_new_model_is_reproducible_and_leaves_the_global_rng_alone():
    nano = training.get_preset("nano")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b = training.new_model(nano), training.new_model(nano)
    assert torch.rand(3).tolist() == expected.tolist()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_uniform_loss_is_the_loss_of_equal_logits():
    logits = torch.zeros(5, 50257)
    assert training.uniform_loss() == pytest.approx(float(F.cross_entropy(logits, torch.arange(5))))


def test_progress_line():
    line = training.progress_line(25, 100, 2.0, 128, width=8)
    assert line == "step 25 / 100 ██░░░░░░ 25% · 1,600 tokens/s · 2.0 s"


def test_train_events_stop_at_the_time_limit():
    nano = training.get_preset("nano")
    ids = tokenizer.encode(DEMO_TEXT)
    trainer = training.new_trainer(nano, ids, 50, "The")
    ticks = itertools.count()
    events = list(training.train_events(trainer, time_limit=2.5, clock=lambda: float(next(ticks))))
    assert events[0]["step"] == 0 and events[0]["loss"] is None and "eval" in events[0]
    assert 0 < trainer.step < 50
    assert "Stopped after 2.5 s" in events[-1]["stopped"] and f"step {trainer.step} of 50" in events[-1]["stopped"]
    assert [e["step"] for e in trainer.log["eval"]] == [0, trainer.step]   # a last eval where it stopped
    hist = training.history(trainer.log)
    assert hist["train_steps"] == list(range(1, trainer.step + 1))
    assert hist["train_losses"] == [e["loss"] for e in trainer.log["train"]]
    assert hist["val_losses"] == [e["val_loss"] for e in trainer.log["eval"]]


# ---- endpoints ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def own_client(app_url):
    """A client of its own: its session's trained models must not leak into the shared client."""
    from gradio_client import Client
    return Client(app_url, verbose=False)


@pytest.fixture(scope="module")
def trained(own_client):
    return own_client.predict(DEMO_TEXT, None, "nano", 10, api_name="/train")


def test_train_endpoint_lowers_the_loss(trained):
    curve, samples, status = trained
    fig = plot_json(curve)
    train, val = fig["data"]
    assert train["x"] == list(range(1, 11))
    assert all(math.isfinite(v) for v in train["y"] + val["y"])
    assert val["x"] == [0, 10]
    assert val["y"][-1] < val["y"][0] - 0.5          # ten steps already beat the random start
    assert val["y"][0] == pytest.approx(training.uniform_loss(), abs=0.5)   # random start ≈ ln(50257)
    prompt = training.sample_prompt(DEMO_TEXT)
    assert samples.startswith(f"step 0: {prompt}") and f"\n\nstep 10: {prompt}" in samples
    assert "step 10 / 10" in status and "tokens/s" in status
    assert f"{len(tokenizer.encode(DEMO_TEXT)):,} tokens" in status


def test_train_use_switches_only_this_session(trained, own_client, client):
    note = own_client.predict(api_name="/train_use")
    name = "my trained model (nano, 10 steps)"
    assert f"Now using **{name}**" in note
    source, arch, *_ = own_client.predict(name, api_name="/model_info")
    n_tokens = len(tokenizer.encode(DEMO_TEXT))
    assert f"trained in this browser session on {n_tokens:,} tokens" in source
    assert "1 × block" in arch
    assert f"**{name} #2**" in own_client.predict(api_name="/train_use")   # a second copy: a new name
    with pytest.raises(Exception, match="Unknown model"):   # another session does not see it
        client.predict(name, api_name="/model_info")
    own_client.predict(api_name="/train_use")
    note = own_client.predict(api_name="/train_use")         # a 4th: the oldest is dropped
    assert f"**{name} #4**" in note and f"only the last 3 are kept: {name} was removed" in note
    with pytest.raises(Exception, match="Unknown model"):
        own_client.predict(name, api_name="/model_info")


def test_train_use_before_training_is_a_clean_error(app_url):
    from gradio_client import Client
    fresh = Client(app_url, verbose=False)
    with pytest.raises(Exception, match="Train a model first"):
        fresh.predict(api_name="/train_use")


@pytest.mark.parametrize("text,preset,steps,message", [
    ("", "nano", 10, "training text is empty"),
    ("   ", "nano", 10, "training text is empty"),
    ("just a few words", "nano", 10, "at least 128 tokens"),
    # The slider itself refuses out-of-range values; the handler checks again (check_number).
    (DEMO_TEXT, "nano", 0, r"must be between 10 and 300, got 0"),
    (DEMO_TEXT, "nano", 10_000, r"must be between 10 and 300, got 10000"),
    (DEMO_TEXT, "nano", 12.5, "Training steps must be a whole number, got 12.5"),
    (DEMO_TEXT, "giant", 10, "giant.*nano"),
])
def test_train_bad_input_is_a_clean_error(client, text, preset, steps, message):
    with pytest.raises(Exception, match=message):
        client.predict(text, None, preset, steps, api_name="/train")


def test_uploaded_file_is_used_instead_of_the_box(client, tmp_path):
    from gradio_client import handle_file
    path = tmp_path / "short.txt"
    path.write_bytes(b"too short \xff")
    # The box holds a long text that would train; the short file is what gets checked.
    with pytest.raises(Exception, match="at least 128 tokens"):
        client.predict(DEMO_TEXT, handle_file(str(path)), "nano", 10, api_name="/train")
