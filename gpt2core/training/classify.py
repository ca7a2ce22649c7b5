"""Classification fine-tuning: a linear head on GPT-2's last token.

python -m gpt2core.training.classify --data train.jsonl [--heldout heldout.jsonl] --out runs/NAME \
    [--init checkpoints/shakespeare] [--train head|last|all] [--last-blocks N] [options]

As in Raschka's LLMs-from-scratch, chapter 6: the text runs through the model, and the final
LayerNorm's output at the text's last token (the one position that has seen every token, attention
being causal) goes through Linear(n_embd, n_classes); softmax over its outputs gives the class
probabilities, trained with cross-entropy. Batches are padded on the right with <|endoftext|>, which
changes nothing at the real tokens, and the last *real* token is read. ``--train head`` trains the
head alone (the body's outputs are then computed once and reused), ``--train last`` also the last
``--last-blocks`` blocks and the final LayerNorm, ``--train all`` everything.

Each line of the JSONL files is {"text": ..., "label": ...} (other fields are kept, ignored).
Without --heldout, records with "split": "heldout" are the held-out set. Evaluation: held-out
loss, accuracy, balanced accuracy (mean recall over classes) and the confusion matrix, printed beside
the majority-class baseline (the held-out share of its most common class: what always answering one
class scores at best). Runs under torchrun like gpt2core.training.train (the same --device, --precision,
--grad-accum, --compile, --init); evaluation and feature extraction run in fp32.
The output folder is a gpt2core checkpoint of the body (loads with gpt2core.load) plus
head.safetensors (the head, with its label names), log.json, loss.png and README.md.
``python -m gpt2core.training.classify_data`` makes a data set: Shakespeare's speeches by play genre.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..text import tokenizer
from ..reference.config import GPT2Config
from ..reference.model import GPT2
from .train import (LOG_FILE, LOSS_PNG, Trainer, TrainSettings, add_run_args, build_model, describe_run,
                    finish_distributed, plot_loss, setup_distributed, tuning_settings)
from ..reference.weights import WeightsError, load, save

TRAIN_MODES = ("head", "last", "all")
HEAD_FILE = "head.safetensors"
HEAD_FORMAT = "gpt2core-classifier-head"
PAD_ID = tokenizer.EOT_ID
POOLING = "final LayerNorm output at the last non-pad token"
EVAL_BATCH = 64


# ---- the model -------------------------------------------------------------------------------------

class GPT2Classifier(nn.Module):
    """A GPT2 body and a Linear(n_embd, n_classes) head on its last token's final hidden state."""

    def __init__(self, body: GPT2, labels: Sequence[str]):
        super().__init__()
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(f"need two or more distinct labels, got {list(labels)}")
        self.body = body
        self.labels = tuple(labels)
        self.head = nn.Linear(body.config.n_embd, len(labels))
        nn.init.normal_(self.head.weight, std=0.02)     # GPT-2's initialisation; the caller seeds it
        nn.init.zeros_(self.head.bias)

    def set_trainable(self, mode: str, last_blocks: int = 1) -> "GPT2Classifier":
        """head: the head alone; last: also the last ``last_blocks`` blocks and the final LayerNorm;
        all: every parameter."""
        if mode not in TRAIN_MODES:
            raise ValueError(f"mode must be one of {', '.join(TRAIN_MODES)}, got {mode!r}")
        n_layer = self.body.config.n_layer
        if mode == "last" and not 1 <= last_blocks <= n_layer:
            raise ValueError(f"last_blocks must be in 1..{n_layer}, got {last_blocks}")
        self.body.requires_grad_(mode == "all")
        if mode == "last":
            for block in self.body.blocks[n_layer - last_blocks:]:
                block.requires_grad_(True)
            self.body.ln_f.requires_grad_(True)
        self.head.requires_grad_(True)
        return self

    def first_trainable(self) -> int:
        """The first block whose weights train: -1 the embeddings, n_layer none (only what follows)."""
        m = self.body
        if any(p.requires_grad for p in (*m.wte.parameters(), *m.wpe.parameters())):
            return -1
        return next((i for i, b in enumerate(m.blocks) if any(p.requires_grad for p in b.parameters())),
                    len(m.blocks))

    def hidden(self, ids: torch.Tensor, last: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids, (B,) positions of each row's last real token (default T - 1) -> (B, d): the final
        LayerNorm's output there. The layers before the first trainable one run without autograd."""
        m = self.body
        B, T = ids.shape
        if T > m.config.n_ctx:
            raise ValueError(f"sequence of {T} tokens exceeds the context of {m.config.n_ctx}")
        last = torch.full((B,), T - 1, device=ids.device) if last is None else last
        grad, first = torch.is_grad_enabled(), self.first_trainable()
        pos = torch.arange(T, device=ids.device)                                # (T,)
        with torch.set_grad_enabled(grad and first < 0):
            h = m.drop(m.wte(ids) + m.wpe(pos))                                 # (B, T, d)
        for i, block in enumerate(m.blocks):
            with torch.set_grad_enabled(grad and i >= first):
                h = block(h)                                                    # (B, T, d)
        h = h[torch.arange(B, device=ids.device), last]                         # (B, d) LayerNorm is per position
        with torch.set_grad_enabled(grad and (first < len(m.blocks) or m.ln_f.weight.requires_grad)):
            return m.ln_f(h)                                                    # (B, d)

    def forward(self, ids: torch.Tensor, last: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits (B, n_classes)."""
        return self.head(self.hidden(ids, last))

    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class ClassifierLoss(nn.Module):
    """The summed cross-entropy of a batch, one module so DDP and torch.compile wrap it.

    ``x`` is (B, T) ids padded with PAD_ID, or (B, d) floats: the body's outputs, cached when only
    the head trains. ``y`` is (B, 2): each row's label and the position of its last real token.
    """

    def __init__(self, classifier: GPT2Classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = self.classifier
        logits = c.head(x) if x.is_floating_point() else c(x, y[:, 1])         # (B, C)
        return F.cross_entropy(logits.float(), y[:, 0], reduction="sum")


# ---- data ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Example:
    ids: tuple[int, ...]
    label: int


def read_records(path) -> list[dict]:
    """Records {"text", "label", ...} from a JSONL file; a bad line is a ValueError naming the file and line."""
    records = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str) or not isinstance(rec.get("label"), str) \
                or not rec["text"].strip() or not rec["label"]:
            raise ValueError(f"{path}:{n}: expected {{\"text\": text, \"label\": text}}")
        records.append(rec)
    return records


def encode(text: str, max_tokens: int) -> tuple[int, ...]:
    """The text's first ``max_tokens`` token ids."""
    return tuple(tokenizer.encode(text)[:max_tokens])


def encode_records(records: list[dict], labels: Sequence[str], max_tokens: int) -> list[Example]:
    index = {k: i for i, k in enumerate(labels)}
    unknown = sorted({r["label"] for r in records} - set(index))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {list(labels)}")
    examples = [Example(encode(r["text"], max_tokens), index[r["label"]]) for r in records]
    return [e for e in examples if e.ids]


def collate(examples: Sequence[Example], pad_id: int = PAD_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids padded on the right, (B, T), and (B, 2): the label and the last real position of each row."""
    T = max(len(e.ids) for e in examples)
    x = torch.full((len(examples), T), pad_id, dtype=torch.long)
    y = torch.empty((len(examples), 2), dtype=torch.long)
    for i, e in enumerate(examples):
        x[i, :len(e.ids)] = torch.tensor(e.ids)
        y[i, 0], y[i, 1] = e.label, len(e.ids) - 1
    return x, y


def length_batches(examples: Sequence[Example], batch_size: int = EVAL_BATCH) -> list[list[int]]:
    """Indices in batches of similar length (little padding); every index once."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def features(classifier: GPT2Classifier, examples: Sequence[Example], batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """(N, d): the body's output (final LayerNorm at the last token) for each example, in fp32."""
    was_training = classifier.training
    classifier.eval()
    device = classifier.head.weight.device
    out = torch.empty(len(examples), classifier.body.config.n_embd, device=device)
    for idx in length_batches(examples, batch_size):
        x, y = collate([examples[i] for i in idx])
        out[idx] = classifier.hidden(x.to(device), y[:, 1].to(device)).float()
    classifier.train(was_training)
    return out


@torch.no_grad()
def predict_logits(classifier: GPT2Classifier, examples: Sequence[Example], feats: torch.Tensor | None = None,
                   batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """(N, C) logits, from cached features when given (the head alone is then applied)."""
    if feats is not None:
        return classifier.head(feats).float()
    return classifier.head(features(classifier, examples, batch_size)).float()


def metrics(logits: torch.Tensor, labels: torch.Tensor, names: Sequence[str]) -> dict:
    """Loss, accuracy, per-class recall, balanced accuracy and the confusion matrix (rows: true class)."""
    pred = logits.argmax(-1)
    C = len(names)
    confusion = torch.zeros(C, C, dtype=torch.long)
    confusion.index_put_((labels.cpu(), pred.cpu()), torch.ones(len(labels), dtype=torch.long), accumulate=True)
    support = confusion.sum(1)
    recall = {names[c]: float(confusion[c, c] / support[c]) for c in range(C) if support[c]}
    return {"val_loss": float(F.cross_entropy(logits, labels)), "accuracy": float((pred == labels).float().mean()),
            "balanced_accuracy": sum(recall.values()) / len(recall), "recall": recall,
            "confusion": confusion.tolist(), "n_eval": len(labels)}


def majority_baseline(train_labels: Sequence[int], heldout_labels: Sequence[int], names: Sequence[str]) -> dict:
    """What a constant answer scores on the held-out set: the training set's most common class, and the
    held-out set's own most common class (the best any constant answer can do, the figure to beat)."""
    def counts(labels):
        return torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=len(names))

    train_c, held_c = counts(train_labels), counts(heldout_labels)
    n = max(1, int(held_c.sum()))
    top_train, top_held = int(train_c.argmax()), int(held_c.argmax())
    return {"train_majority": names[top_train], "train_majority_accuracy": float(held_c[top_train]) / n,
            "majority": names[top_held], "accuracy": float(held_c[top_held]) / n,
            "tied": len(set(held_c.tolist())) == 1,          # balanced classes: any constant answer scores it
            "heldout_counts": {names[c]: int(held_c[c]) for c in range(len(names))},
            "train_counts": {names[c]: int(train_c[c]) for c in range(len(names))}}


# ---- training --------------------------------------------------------------------------------------

@dataclass
class ClassifierTrainer(Trainer):
    """A Trainer whose model is a GPT2Classifier and whose step draws labelled examples (train_ids and
    val_ids stay empty). When only the head trains, the body's outputs are computed once (``feats``)."""
    examples: list = field(default_factory=list)           # training Examples
    heldout: list = field(default_factory=list)            # held-out Examples
    n_eval: int = 0                                        # held-out examples per evaluation (0: all)
    feats: torch.Tensor | None = None                      # (N, d) cached body outputs of the training examples
    heldout_feats: torch.Tensor | None = None              # (M, d) the same for the held-out examples

    def loss_engine(self) -> nn.Module:
        return ClassifierLoss(self.model)

    @classmethod
    def from_examples(cls, classifier: GPT2Classifier, train: list[Example], heldout: list[Example],
                      settings: TrainSettings, n_eval: int = 0, feats: torch.Tensor | None = None,
                      heldout_feats: torch.Tensor | None = None) -> "ClassifierTrainer":
        """``feats``/``heldout_feats``: the body's outputs when the caller has them (the head alone trains)."""
        if not train or not heldout:
            raise ValueError("need training and held-out examples")
        empty = torch.empty(0, dtype=torch.long)
        trainer = cls(classifier, settings, empty, empty, examples=list(train), heldout=list(heldout), n_eval=n_eval)
        if classifier.first_trainable() >= len(classifier.body.blocks) and not classifier.body.ln_f.weight.requires_grad:
            shown = trainer.eval_examples()
            trainer.feats = features(classifier, train) if feats is None else feats
            trainer.heldout_feats = features(classifier, shown) if heldout_feats is None else heldout_feats[:len(shown)]
        return trainer

    def eval_examples(self) -> list[Example]:
        return self.heldout[:self.n_eval] if self.n_eval else self.heldout

    def micro_batches(self) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
        """As Trainer's: the global batch from the (seed, step) generator, this rank's slice, and the
        number of examples in the global batch (the loss is their mean)."""
        s = self.settings
        per_rank = s.batch_size * s.grad_accum
        g = torch.Generator().manual_seed(s.seed * 1_000_003 + self.step)
        picks = torch.randint(0, len(self.examples), (per_rank * self.world_size,), generator=g).tolist()
        mine = picks[self.rank * per_rank:(self.rank + 1) * per_rank]
        return [self.batch(mine[k * s.batch_size:(k + 1) * s.batch_size]) for k in range(s.grad_accum)], len(picks)

    def batch(self, picks: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.feats is None:
            return collate([self.examples[i] for i in picks])
        y = torch.zeros((len(picks), 2), dtype=torch.long)
        y[:, 0] = torch.tensor([self.examples[i].label for i in picks])
        return self.feats[picks], y

    def eval_now(self) -> dict:
        shown = self.eval_examples()
        logits = predict_logits(self.model, shown, self.heldout_feats)
        labels = torch.tensor([e.label for e in shown], device=logits.device)
        entry = {"step": self.step, **metrics(logits, labels, self.model.labels)}
        self.log["eval"].append(entry)
        return entry

    def save(self, folder, dtype: torch.dtype | None = None, extra: dict | None = None) -> Path:
        """The body (our checkpoint format), the head and the log; rank 0 alone writes."""
        folder = Path(folder)
        if self.rank != 0:
            return folder
        meta = {"train_settings": asdict(self.settings), "step": self.step, "run": self.run_info(), **(extra or {})}
        save_classifier(self.model, folder, dtype=dtype, metadata=meta)
        (folder / LOG_FILE).write_text(json.dumps(self.log, indent=1) + "\n", encoding="utf-8")
        return folder


# ---- saving and loading ------------------------------------------------------------------------------

def body_fingerprint(body: GPT2) -> str:
    """sha256 of the body's parameters as fp32 (names and values): which weights a head was trained on,
    however they are stored."""
    h = hashlib.sha256()
    for name, t in sorted(body.state_dict().items()):
        if name == "lm_head.weight" and body.config.tie_weights:
            continue
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_head(classifier: GPT2Classifier, path, metadata: dict | None = None) -> Path:
    """The head alone (weight, bias) with its label names and the body's fingerprint: a few KB."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = classifier.head
    meta = {"format": HEAD_FORMAT, "labels": json.dumps(list(classifier.labels)),
            "n_embd": str(head.in_features), "pooling": POOLING, "body_sha256": body_fingerprint(classifier.body),
            **{k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}}
    save_file({"weight": head.weight.detach().float().cpu().contiguous(),
               "bias": head.bias.detach().float().cpu().contiguous()}, str(path), metadata=meta)
    return path


def read_head(path) -> tuple[dict[str, torch.Tensor], dict]:
    """A head file's tensors and metadata (labels decoded), checked: a WeightsError names what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: file not found")
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"{path}: corrupt or not a safetensors file ({e})") from None
    if meta.get("format") != HEAD_FORMAT or set(tensors) != {"weight", "bias"}:
        raise WeightsError(f"{path}: not a classifier head (format {meta.get('format')!r}, tensors {sorted(tensors)})")
    try:
        meta["labels"] = json.loads(meta["labels"])
    except (KeyError, json.JSONDecodeError):
        raise WeightsError(f"{path}: no label names") from None
    w, b = tensors["weight"], tensors["bias"]
    if w.dim() != 2 or w.shape[0] != len(meta["labels"]) or b.shape != (w.shape[0],) \
            or not (torch.isfinite(w).all() and torch.isfinite(b).all()):
        raise WeightsError(f"{path}: head shapes {tuple(w.shape)}, {tuple(b.shape)} do not fit "
                           f"{len(meta['labels'])} labels, or hold non-finite values")
    return tensors, meta


def attach_head(body: GPT2, path) -> tuple[GPT2Classifier, dict]:
    """A classifier of ``body`` and the head saved at ``path``; its metadata (say body_sha256, to compare)."""
    tensors, meta = read_head(path)
    if tensors["weight"].shape[1] != body.config.n_embd:
        raise WeightsError(f"{path}: the head reads {tensors['weight'].shape[1]} features; the model has "
                           f"width {body.config.n_embd}")
    clf = GPT2Classifier(body, meta["labels"])
    with torch.no_grad():
        clf.head.weight.copy_(tensors["weight"])
        clf.head.bias.copy_(tensors["bias"])
    return clf, meta


def save_classifier(classifier: GPT2Classifier, folder, dtype: torch.dtype | None = None,
                    metadata: dict | None = None) -> Path:
    """The body in our checkpoint format (``dtype`` fp16 halves it) and head.safetensors beside it."""
    folder = Path(folder)
    info = {"labels": list(classifier.labels), "head_file": HEAD_FILE, "pooling": POOLING}
    save(classifier.body, folder, dtype=dtype, metadata={**(metadata or {}), "classifier": info})
    save_head(classifier, folder / HEAD_FILE)
    return folder


def load_classifier(folder) -> GPT2Classifier:
    """A folder written by save_classifier (or the CLI)."""
    folder = Path(folder)
    clf, _ = attach_head(load(folder), folder / HEAD_FILE)
    return clf.eval()


# ---- the command line ----------------------------------------------------------------------------------

def card(doc: dict, before: dict, after: dict, baseline: dict, seconds: float, command: str) -> str:
    """A short card: every figure read from the run."""
    info, cfg, names = doc["run"], doc["config"], doc["classifier"]["labels"]
    rows = "\n".join(f"| {n} | {baseline['train_counts'][n]:,} | {baseline['heldout_counts'][n]:,} | "
                     f"{before['recall'].get(n, 0):.1%} | {after['recall'].get(n, 0):.1%} |" for n in names)
    confusion = "\n".join(f"| {n} | " + " | ".join(f"{v:,}" for v in row) + " |"
                          for n, row in zip(names, after["confusion"]))
    return f"""# GPT-2 classifier ({cfg['n_layer']} layers, width {cfg['n_embd']}): {', '.join(names)}

Body from {doc.get('init') or 'random weights'}; a Linear({cfg['n_embd']}, {len(names)}) head on the {POOLING}.
Trained: {doc['classifier']['trained']} ({doc['classifier']['trainable_params']:,} parameters), {doc['step']} steps,
effective batch {info['effective_batch']}, {info['device']}, {info['precision']}, {seconds:.0f} s.

Held-out accuracy **{after['accuracy']:.1%}** ({after['n_eval']:,} examples; before training {before['accuracy']:.1%});
majority-class baseline **{baseline['accuracy']:.1%}** (always `{baseline['majority']}`).
Balanced accuracy {after['balanced_accuracy']:.1%}; held-out loss {before['val_loss']:.3f} -> {after['val_loss']:.3f}.

| class | train | held out | recall before | recall after |
|---|---|---|---|---|
{rows}

Confusion matrix after training (rows: true class; columns: predicted {', '.join(names)}):

| true | {' | '.join(names)} |
|---|{'---|' * len(names)}
{confusion}

![loss curve]({LOSS_PNG})

Command: `{command}`
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpt2core.training.classify", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="training records, JSONL {\"text\", \"label\"}")
    ap.add_argument("--heldout", default=None, help="held-out records (default: the --data records whose split is heldout)")
    ap.add_argument("--train", choices=TRAIN_MODES, default="head",
                    help="what trains: the head alone, also the last --last-blocks blocks and the final LayerNorm, or all")
    ap.add_argument("--last-blocks", type=int, default=1)
    ap.add_argument("--labels", default=None, help="class names in order, comma-separated (default: sorted)")
    ap.add_argument("--max-tokens", type=int, default=0, help="read at most this many tokens of a text (0: the context)")
    ap.add_argument("--eval-examples", type=int, default=0, help="held-out examples per evaluation (0: all)")
    ap.add_argument("--fp16", action="store_true", help="store the body's weights in fp16")
    add_run_args(ap, steps=500, batch_size=32, unit="examples")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    try:
        device = setup_distributed(args.device)
        settings = tuning_settings(args)
        records = read_records(args.data)
        if args.heldout:
            train_records, heldout_records = records, read_records(args.heldout)
        else:
            train_records = [r for r in records if r.get("split") != "heldout"]
            heldout_records = [r for r in records if r.get("split") == "heldout"]
            if not heldout_records:
                raise ValueError(f"{args.data} has no records with \"split\": \"heldout\"; give --heldout")
        labels = args.labels.split(",") if args.labels else sorted({r["label"] for r in train_records})
    except (ValueError, OSError) as e:
        ap.error(str(e))

    cfg = GPT2Config(n_ctx=args.n_ctx, n_embd=args.n_embd, n_head=args.n_head, n_layer=args.n_layer,
                     dropout=args.dropout)
    torch.manual_seed(args.seed)   # the same initial weights (body and head) on every rank
    try:
        classifier = GPT2Classifier(build_model(args.init, cfg, args.dropout), labels)
        classifier.set_trainable(args.train, args.last_blocks).to(device)
        max_tokens = min(args.max_tokens or classifier.body.config.n_ctx, classifier.body.config.n_ctx)
        train = encode_records(train_records, labels, max_tokens)
        heldout = encode_records(heldout_records, labels, max_tokens)
    except (ValueError, WeightsError) as e:
        ap.error(str(e))
    is_main = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    say = (lambda msg: print(msg, file=sys.stderr)) if is_main else (lambda msg: None)  # noqa: E731
    baseline = majority_baseline([e.label for e in train], [e.label for e in heldout], labels)
    say(f"{len(train):,} training and {len(heldout):,} held-out examples (at most {max_tokens} tokens each); "
        f"classes {', '.join(f'{k} {v:,}' for k, v in baseline['train_counts'].items())} in train")
    what = {"head": "the head", "last": f"the head, the last {args.last_blocks} block(s) and the final LayerNorm",
            "all": "every parameter"}[args.train]
    say(f"training {what}: {classifier.trainable_params():,} of {sum(p.numel() for p in classifier.parameters()):,} parameters"
        f"{f', body from {args.init}' if args.init else ''}")
    t0 = time.perf_counter()
    tuner = ClassifierTrainer.from_examples(classifier, train, heldout, settings, n_eval=args.eval_examples)
    if tuner.feats is not None:
        say(f"the body's outputs for every example computed once: {time.perf_counter() - t0:.1f} s")
    mean_len = sum(len(e.ids) for e in train) / len(train)
    say(describe_run(tuner, round(mean_len)).replace("tokens per step", "tokens per step (mean example length)"))
    tuner.log["run"] = tuner.run_info()
    tuner.log["baseline"] = baseline

    def report(e: dict) -> None:
        say(f"step {e['step']}: held-out loss {e['val_loss']:.4f}, accuracy {e['accuracy']:.1%} "
            f"(balanced {e['balanced_accuracy']:.1%}) of {e['n_eval']:,}; majority-class baseline "
            f"{baseline['accuracy']:.1%}")

    if is_main:
        report(tuner.eval_now())   # the "before" figures
    t0 = time.perf_counter()
    for event in tuner.run():
        if "eval" in event:
            report(event["eval"])
        elif is_main and event["step"] % 50 == 0:
            say(f"step {event['step']}: loss {event['loss']:.4f}")
    seconds = time.perf_counter() - t0
    tuner.log["seconds"] = seconds
    tuner.log["wall_seconds"] = time.perf_counter() - t_start
    if is_main:
        command = ("torchrun ... -m gpt2core.training.classify " if tuner.world_size > 1 else "python -m gpt2core.training.classify ") \
            + " ".join(argv if argv is not None else sys.argv[1:])
        before, after = tuner.log["eval"][0], tuner.log["eval"][-1]
        extra = {"init": args.init, "command": command, "kind": "classification fine-tuning (last-token head)",
                 "data": {"train": Path(args.data).name, "train_examples": len(train),
                          "heldout": Path(args.heldout).name if args.heldout else None,
                          "heldout_examples": len(heldout), "max_tokens": max_tokens},
                 "accuracy": {"before": before["accuracy"], "after": after["accuracy"],
                              "balanced": after["balanced_accuracy"], "baseline": baseline["accuracy"],
                              "baseline_class": baseline["majority"], "examples": after["n_eval"]}}
        out = Path(args.out)
        tuner.save(out, dtype=torch.float16 if args.fp16 else None, extra=extra)
        doc = json.loads((out / "config.json").read_text())
        doc["classifier"].update({"trained": what, "trainable_params": classifier.trainable_params()})
        (out / "config.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        save_head(classifier, out / HEAD_FILE, metadata={"trained": what, "steps": tuner.step,
                                                          "accuracy": extra["accuracy"], "init": args.init or "",
                                                          "command": command})
        plot_loss(tuner.log, out / LOSS_PNG)
        (out / "README.md").write_text(card(doc, before, after, baseline, seconds, command), encoding="utf-8")
        say(f"held-out accuracy {after['accuracy']:.1%} vs majority-class baseline {baseline['accuracy']:.1%} "
            f"(always {baseline['majority']}) on {after['n_eval']:,} examples; training {seconds:.0f} s, "
            f"{tuner.log['wall_seconds']:.0f} s in all; wrote {out}")
    finish_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
