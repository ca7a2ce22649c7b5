"""What the Train tab runs: tiny presets, text checks, and a bounded training loop. No gradio here.

Everything a user can ask for is bounded: only the tiny presets below, at most MAX_STEPS steps,
at most MAX_TEXT_CHARS characters of text, and at most TIME_LIMIT seconds of training per run.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from gpt2core import GPT2, get_config
from gpt2core.text import tokenizer
from gpt2core.training.finetune import FineTuner, collate, encode_example
from gpt2core.training.instruct_data import make_split
from gpt2core.training.train import IGNORE_INDEX, Trainer, TrainSettings, build_model
from gpt2core.reference.weights import WEIGHTS_FILE

from ..inputs import InputError
from ..session import BUNDLED_DIR

MAX_TEXT_CHARS = 200_000      # longer text is cut (about 50k tokens)
MIN_STEPS, MAX_STEPS = 10, 300
TIME_LIMIT = 120.0            # seconds of training per run; the run stops early with a notice
EVAL_POINTS = 5               # evaluations (with a sample) per run, besides the one at step 0,
                              # but at most one every MIN_STEPS steps
SAMPLE_TOKENS = 24
VOCAB_SIZE = 50257


@dataclass(frozen=True)
class TinyPreset:
    key: str
    n_layer: int
    n_embd: int
    n_head: int
    n_ctx: int
    batch_size: int
    lr: float

    @property
    def label(self) -> str:
        return (f"{self.key}: {self.n_layer} layer{'s' if self.n_layer > 1 else ''}, d={self.n_embd}, "
                f"{self.n_head} heads, ctx {self.n_ctx}")

    @property
    def min_tokens(self) -> int:
        """Enough text for a few different windows of n_ctx tokens."""
        return 4 * self.n_ctx

    def config(self):
        return get_config("tiny", n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head,
                          n_ctx=self.n_ctx, dropout=0.0)


# Both read 128 tokens per step: most of the cost is the 50,257-word output layer, per token.
PRESETS: dict[str, TinyPreset] = {p.key: p for p in (
    TinyPreset("nano", n_layer=1, n_embd=32, n_head=2, n_ctx=32, batch_size=4, lr=1e-2),
    TinyPreset("micro", n_layer=2, n_embd=64, n_head=4, n_ctx=64, batch_size=2, lr=5e-3),
)}
DEFAULT_PRESET = "nano"


def preset_choices() -> list[tuple[str, str]]:
    """(label, key) pairs for a dropdown."""
    return [(p.label, p.key) for p in PRESETS.values()]


def get_preset(key) -> TinyPreset:
    if not isinstance(key, str) or key not in PRESETS:
        raise InputError(f"Unknown model size {key!r}. Choose one of: {', '.join(PRESETS)}.")
    return PRESETS[key]


def read_text_file(path, max_chars: int = MAX_TEXT_CHARS) -> str:
    """A text file as UTF-8 (bad bytes become U+FFFD); reads at most max_chars + 1 characters."""
    try:
        with open(Path(path), encoding="utf-8", errors="replace") as f:
            return f.read(max_chars + 1)
    except OSError as e:
        raise InputError(f"Could not read the uploaded file: {e.strerror or e}.") from None


@dataclass
class TrainingText:
    text: str
    ids: list[int]
    notices: list[str]


def prepare_text(text, preset: TinyPreset, max_chars: int = MAX_TEXT_CHARS) -> TrainingText:
    """Check and tokenize the training text: not empty, long enough for the preset, cut if too long."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise InputError(f"The training text must be text, not {type(text).__name__}.")
    if not text.strip():
        raise InputError("The training text is empty: paste some text or upload a .txt file.")
    notices = []
    if len(text) > max_chars:
        text = text[:max_chars]
        notices.append(f"The text was cut to its first {max_chars:,} characters.")
    ids = tokenizer.encode(text)
    if len(ids) < preset.min_tokens:
        raise InputError(f"The text is too short: it has {len(ids):,} tokens, and the {preset.key} model "
                         f"needs at least {preset.min_tokens:,} tokens (4 windows of {preset.n_ctx}). "
                         f"Paste more text.")
    return TrainingText(text, ids, notices)


def sample_prompt(text: str, max_words: int = 2) -> str:
    """The first words of the text: each sample shows how the model continues its own text."""
    words = text[:400].split()[:max_words]
    return " ".join(words)[:40] or "The"


def make_settings(preset: TinyPreset, steps: int, prompt: str) -> TrainSettings:
    return TrainSettings(steps=steps, batch_size=preset.batch_size, lr=preset.lr, min_lr=preset.lr / 10,
                         warmup_steps=max(1, steps // 10), weight_decay=0.1,
                         eval_every=max(MIN_STEPS, steps // EVAL_POINTS),
                         eval_batches=2, val_fraction=0.1, seed=1337, sample_prompt=prompt,
                         sample_tokens=SAMPLE_TOKENS)


def new_model(preset: TinyPreset, seed: int = 0) -> GPT2:
    """A fresh, randomly initialised model (same seed, same start), without moving the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2(preset.config())


def new_trainer(preset: TinyPreset, ids: list[int], steps: int, prompt: str, seed: int = 0) -> Trainer:
    return Trainer.from_ids(new_model(preset, seed), ids, make_settings(preset, steps, prompt))


def train_events(trainer: Trainer, time_limit: float = TIME_LIMIT,
                 clock: Callable[[], float] = time.monotonic) -> Iterator[dict]:
    """Evaluate at step 0, then train; yield {"step", "loss", "elapsed", ["eval"], ["stopped"]}.

    Stops at ``trainer.settings.steps`` or after ``time_limit`` seconds, whichever comes first;
    a run cut short gets one last evaluation so the curve and the samples end where training did.
    """
    start = clock()
    yield {"step": trainer.step, "loss": None, "elapsed": 0.0, "eval": trainer.eval_now()}
    timed_out = lambda: clock() - start > time_limit  # noqa: E731
    last = None
    for event in trainer.run(should_stop=timed_out):
        event["elapsed"] = clock() - start
        last = event
        yield event
    if trainer.step < trainer.settings.steps:
        event = {"step": trainer.step, "loss": None, "elapsed": clock() - start,
                 "stopped": f"Stopped after {time_limit:g} s (the time limit per run) at step "
                            f"{trainer.step} of {trainer.settings.steps}."}
        if last is not None and "eval" not in last:   # (with no step done, step 0 was just evaluated)
            event["eval"] = trainer.eval_now()
        yield event


def history(log: dict) -> dict:
    """The log as plain lists for the loss-curve figure."""
    train, evals = log.get("train", []), log.get("eval", [])
    return {"train_steps": [e["step"] for e in train], "train_losses": [e["loss"] for e in train],
            "eval_steps": [e["step"] for e in evals], "val_losses": [e["val_loss"] for e in evals]}


def uniform_loss(vocab_size: int = VOCAB_SIZE) -> float:
    """The loss of a model that gives every token the same probability: ln(vocab size)."""
    return math.log(vocab_size)


def progress_line(step: int, total: int, elapsed: float, tokens_per_step: int, width: int = 20) -> str:
    """'step 40 / 100 ████████░░░░ 40% · 3,200 tokens/s · 3.2 s' (rate from the steps done)."""
    frac = step / total if total else 0.0
    filled = round(frac * width)
    rate = step * tokens_per_step / elapsed if elapsed > 0 else 0.0
    return (f"step {step} / {total} {'█' * filled}{'░' * (width - filled)} {frac:.0%} · "
            f"{rate:,.0f} tokens/s · {elapsed:.1f} s")


# ---- instruction tuning -------------------------------------------------------------------------
# The Alpaca prompt alone is ~60 tokens, so these bases have a context of 128. The bundled model
# (6 layers, d=128) knows English; the fresh one starts from nothing. Same limits: MAX_STEPS, TIME_LIMIT.
INSTRUCT_FRESH = TinyPreset("fresh", n_layer=2, n_embd=64, n_head=4, n_ctx=128, batch_size=8, lr=3e-3)
INSTRUCT_BATCH = 8
INSTRUCT_LR = {"bundled": 1e-3, "fresh": INSTRUCT_FRESH.lr}
INSTRUCT_TRAIN_RECORDS, INSTRUCT_HELDOUT_RECORDS = 1200, 60
INSTRUCT_EVAL_RECORDS = 24    # held-out records answered before and after (exact match)
INSTRUCT_ANSWER_TOKENS = 16   # longest greedy answer waited for (the tasks' answers need at most ~12)


def instruct_base_choices() -> list[tuple[str, str]]:
    """(label, key) pairs: the bundled checkpoint when it is there, and a fresh model."""
    bundled = (BUNDLED_DIR / WEIGHTS_FILE).is_file()
    choices = [("the bundled model (shakespeare: 6 layers, d=128), fine-tuned", "bundled")] if bundled else []
    return choices + [(f"a fresh model ({INSTRUCT_FRESH.n_layer} layers, d={INSTRUCT_FRESH.n_embd}, "
                       f"ctx {INSTRUCT_FRESH.n_ctx}), from random weights", "fresh")]


def instruct_base_model(key) -> GPT2:
    """A new copy for this request: the shared models are never trained in place."""
    keys = [k for _, k in instruct_base_choices()]
    if not isinstance(key, str) or key not in keys:
        raise InputError(f"Unknown starting model {key!r}. Choose one of: {', '.join(keys)}.")
    if key == "bundled":
        return build_model(str(BUNDLED_DIR), INSTRUCT_FRESH.config(), dropout=0.0)
    return new_model(INSTRUCT_FRESH)


@functools.lru_cache(maxsize=1)
def instruct_data() -> tuple[tuple[dict, ...], tuple[dict, ...]]:
    """The generated records (seeded, so the same for everyone): train, and held out with one record
    of each task first (the answers shown before and after)."""
    train, heldout = make_split(INSTRUCT_TRAIN_RECORDS, INSTRUCT_HELDOUT_RECORDS, seed=0)
    first = {}
    for r in heldout:
        first.setdefault(r["instruction"], r)
    shown = list(first.values())
    return tuple(train), tuple(shown + [r for r in heldout if r not in shown])


def n_shown_answers() -> int:
    return len({r["instruction"] for r in instruct_data()[1]})


def new_finetuner(key, steps: int) -> FineTuner:
    model = instruct_base_model(key)   # first: it checks the key
    train, heldout = instruct_data()
    lr = INSTRUCT_LR[key]
    settings = TrainSettings(steps=steps, batch_size=INSTRUCT_BATCH, lr=lr, min_lr=lr / 10,
                             warmup_steps=max(1, steps // 10), weight_decay=0.0, eval_every=steps, seed=1337)
    tuner = FineTuner.from_records(model, list(train), list(heldout), settings,
                                   n_eval_records=INSTRUCT_EVAL_RECORDS)
    tuner.n_shown, tuner.answer_tokens = n_shown_answers(), INSTRUCT_ANSWER_TOKENS
    return tuner


@dataclass
class MaskedToken:
    text: str
    trained: bool     # its prediction carries loss (a response token or the end token)
    role: str         # "prompt", "response", "end" or "padding"


def masked_example(record: dict, pad_to: int = 0) -> list[MaskedToken]:
    """A record's tokens as one training row shows them: the prompt (ignored), the response and the
    end token (trained: the loss of predicting each), then padding (ignored) up to ``pad_to`` tokens."""
    ex = encode_example(record)
    x, y = collate([ex])
    trained = set(i + 1 for i in (y[0] != IGNORE_INDEX).nonzero().flatten().tolist())   # target t is token t+1
    out = []
    for i, tid in enumerate(ex.ids):
        role = "prompt" if i < ex.n_prompt else ("end" if tid == tokenizer.EOT_ID else "response")
        out.append(MaskedToken(tokenizer.decode([tid]), i in trained, role))
    out += [MaskedToken(tokenizer.EOT, False, "padding")] * max(0, pad_to - len(ex.ids))
    return out


def answer_rows(before: dict, after: dict | None) -> list[dict]:
    """The shown held-out records with the answers before (and after) training."""
    after_answers = after["answers"] if after else [None] * len(before["answers"])
    return [{"instruction": b["instruction"], "input": b["input"], "expected": b["output"],
             "before": b["answer"], "before_ok": b["correct"],
             "after": a["answer"] if a else None, "after_ok": a["correct"] if a else None}
            for b, a in zip(before["answers"], after_answers)]
