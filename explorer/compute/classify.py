"""What the Train tab's genre classifier runs: a head on the bundled model's last token. No gradio here.

The body is the bundled model, frozen: only the head (Linear(n_embd, 3), a few hundred numbers) trains,
so the body's outputs for the bundled lines are computed once per process and every user's training
reuses them. A user's head lives in that user's gr.State (``head_state``), never here. Everything a
user can ask for is bounded: MAX_STEPS steps, TIME_LIMIT seconds, a line of at most the context.
"""
from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass

import numpy as np
import torch

from gpt2core import GPT2, load
from gpt2core.training.classify import (ClassifierTrainer, GPT2Classifier, attach_head, body_fingerprint, encode_records,
                               features, majority_baseline, metrics, read_records)
from gpt2core.reference.devices import ids_on
from gpt2core.reference.hooks import capture
from gpt2core.training.train import TrainSettings
from gpt2core.reference.weights import WEIGHTS_FILE, WeightsError

from ..inputs import InputError, check_number, prepare_prompt
from ..session import BUNDLED_DIR, random_model
from . import to_numpy

LINES_FILE = BUNDLED_DIR / "genre_lines.jsonl"      # made by python -m gpt2core.training.classify_data (--small)
HEAD_FILE = BUNDLED_DIR / "genre_head.safetensors"  # trained by python -m gpt2core.training.classify (the card says how)
MIN_STEPS, MAX_STEPS = 10, 500
TIME_LIMIT = 30.0            # seconds of training per run
EVAL_POINTS = 10             # held-out evaluations per run besides step 0
BATCH, LR = 32, 1e-2         # a linear head on fixed features: a large rate is stable
PATTERN_HOOK = "blocks.{}.attn.hook_pattern"
STARTS = {"fresh": "a fresh head (random weights)", "bundled": "the bundled head (trained on the whole data set)"}

_lock = threading.Lock()     # one thread computes the shared features; the others wait for them


@functools.lru_cache(maxsize=1)
def body() -> tuple[GPT2, str]:
    """The frozen body and its name: the bundled model (a copy of its own, always fp32, so that its
    outputs are the ones the bundled head was trained on), or a random tiny model where it is missing."""
    if (BUNDLED_DIR / WEIGHTS_FILE).is_file():
        model, name = load(BUNDLED_DIR), "the bundled model (shakespeare)"
    else:
        model, name = random_model(), "a random tiny model (the bundled checkpoint is missing)"
    model.eval().requires_grad_(False)
    for m in model.modules():   # inference only: a trainer's .train() on a classifier must not turn dropout on
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model, name


@functools.lru_cache(maxsize=1)
def data() -> tuple[tuple[str, ...], list, list, list[dict]]:
    """Labels, train and held-out Examples of the bundled lines, and the held-out records (for the examples)."""
    records = read_records(LINES_FILE)
    labels = tuple(sorted({r["label"] for r in records}))
    n_ctx = body()[0].config.n_ctx
    train = [r for r in records if r.get("split") == "train"]
    held = [r for r in records if r.get("split") == "heldout"]
    return labels, encode_records(train, labels, n_ctx), encode_records(held, labels, n_ctx), held


def shared_features() -> tuple[torch.Tensor, torch.Tensor]:
    """(N, d) and (M, d): the frozen body's output for every bundled train and held-out line, made once."""
    with _lock:
        return _features()


@functools.lru_cache(maxsize=1)
def _features() -> tuple[torch.Tensor, torch.Tensor]:
    labels, train, held, _ = data()
    clf = GPT2Classifier(body()[0], labels)
    return features(clf, train), features(clf, held)


def baseline() -> dict:
    labels, train, held, _ = data()
    return majority_baseline([e.label for e in train], [e.label for e in held], labels)


@functools.lru_cache(maxsize=1)
def bundled_head() -> tuple[dict | None, str]:
    """The bundled head as a state (see head_state) and its metadata, or None and why it can't be used."""
    model, _ = body()
    if not HEAD_FILE.is_file():
        return None, f"there is no bundled head ({HEAD_FILE.name} is missing)"
    try:
        clf, meta = attach_head(model, HEAD_FILE)
    except WeightsError as e:
        return None, f"the bundled head can't be read: {e}"
    if meta.get("body_sha256") != body_fingerprint(model):
        return None, "the bundled head was trained on other weights than this model's"
    return {"weight": clf.head.weight.detach().clone(), "bias": clf.head.bias.detach().clone(),
            "labels": list(clf.labels), "start": "bundled", "steps": int(meta.get("steps", 0)), "meta": meta}, ""


def start_choices() -> list[tuple[str, str]]:
    """(label, key): a fresh head, and the bundled one where it fits this body."""
    return [(label, key) for key, label in STARTS.items() if key == "fresh" or bundled_head()[0] is not None]


def classifier(state: dict | None, seed: int = 0) -> GPT2Classifier:
    """A classifier of the shared body and the head in ``state`` (None: a fresh one, from ``seed``); the
    global random state is left as it was."""
    labels = tuple(state["labels"]) if state else data()[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = GPT2Classifier(body()[0], labels)    # the body is shared and frozen: only the head is new
    if state:
        with torch.no_grad():
            clf.head.weight.copy_(state["weight"])
            clf.head.bias.copy_(state["bias"])
    return clf.eval()


def new_trainer(start, steps: int, seed: int = 0) -> ClassifierTrainer:
    """A trainer of a new head (fresh, or a copy of the bundled one) on the bundled lines."""
    keys = [k for _, k in start_choices()]
    if not isinstance(start, str) or start not in keys:
        raise InputError(f"Unknown starting head {start!r}. Choose one of: {', '.join(keys)}.")
    clf = classifier(bundled_head()[0] if start == "bundled" else None, seed).set_trainable("head")
    labels, train, held, _ = data()
    feats, held_feats = shared_features()
    settings = TrainSettings(steps=steps, batch_size=BATCH, lr=LR, min_lr=LR / 10, warmup_steps=max(1, steps // 20),
                             weight_decay=0.0, eval_every=max(1, steps // EVAL_POINTS), seed=1337 + seed)
    return ClassifierTrainer.from_examples(clf, train, held, settings, feats=feats, heldout_feats=held_feats)


def head_state(trainer: ClassifierTrainer, start: str) -> dict:
    """What a session keeps of its head: copies of its weights, the labels and how it was trained."""
    head = trainer.model.head
    return {"weight": head.weight.detach().clone(), "bias": head.bias.detach().clone(),
            "labels": list(trainer.model.labels), "start": start, "steps": trainer.step}


def heldout_metrics(state: dict | None) -> dict:
    """Accuracy and the rest (gpt2core.training.classify.metrics) of a head on the bundled held-out lines."""
    clf = classifier(state)
    _, _, held, _ = data()
    with torch.no_grad():
        logits = clf.head(shared_features()[1])
    return metrics(logits, torch.tensor([e.label for e in held], device=logits.device), clf.labels)


def curve(log: dict) -> dict:
    """The log as plain lists for the figure."""
    train, evals = log.get("train", []), log.get("eval", [])
    return {"train_steps": [e["step"] for e in train], "losses": [e["loss"] for e in train],
            "eval_steps": [e["step"] for e in evals], "accuracies": [e["accuracy"] for e in evals]}


def progress_line(step: int, total: int, elapsed: float, width: int = 20) -> str:
    frac = step / total if total else 0.0
    filled = round(frac * width)
    return f"step {step} / {total} {'█' * filled}{'░' * (width - filled)} {frac:.0%} · {elapsed:.1f} s"


def example_lines(per_label: int = 1) -> list[str]:
    """Held-out lines (the head never trains on them), the first of each label, single lines first."""
    _, _, _, held = data()
    out = []
    for label in data()[0]:
        mine = sorted((i for i, r in enumerate(held) if r["label"] == label), key=lambda i: ("\n" in held[i]["text"], i))
        out += [held[i]["text"] for i in mine[:per_label]]
    return out


@dataclass
class Prediction:
    labels: list[str]
    probs: np.ndarray          # (C,) softmax of the head's logits
    tokens: list[str]          # the line's tokens, printable
    attention: np.ndarray      # (T,) how the last token splits its attention, one head
    layer: int
    head: int
    notices: list[str]


def predict(state: dict | None, text, layer, head) -> Prediction:
    """Class probabilities of a line, and the last token's attention in one head, from one forward pass."""
    model, _ = body()
    cfg = model.config
    if text is not None and not isinstance(text, str):
        raise InputError(f"The line must be text, not {type(text).__name__}.")
    if text is None or not text.strip():
        raise InputError("The line is empty: type a line (or pick an example) to classify.")
    layer = check_number(layer, "Layer", 0, cfg.n_layer - 1, integer=True)
    head = check_number(head, "Head", 0, cfg.n_head - 1, integer=True)
    prompt = prepare_prompt(text, max_tokens=cfg.n_ctx, keep="start")   # the head reads a text's first tokens
    clf = classifier(state)
    with torch.no_grad(), capture([PATTERN_HOOK.format(layer)]) as cache:
        logits = clf(ids_on(model, [prompt.ids]))                         # (1, C)
    pattern = cache[PATTERN_HOOK.format(layer)][0, head, -1]               # (T,) the last query's row
    probs = torch.softmax(logits[0].float(), -1)
    return Prediction(list(clf.labels), to_numpy(probs), prompt.tokens, to_numpy(pattern.float()), layer, head,
                      prompt.notices)


def uniform_loss() -> float:
    """The loss of a head that gives every class the same probability: ln(number of classes)."""
    return math.log(len(data()[0]))
