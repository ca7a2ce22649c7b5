"""Instruction fine-tuning: Alpaca-formatted records, the loss on the response tokens only.

python -m gpt2core.training.finetune --data train.jsonl [--heldout heldout.jsonl] --out runs/NAME \
    [--init checkpoints/shakespeare] [options]

Each line of the JSONL files is {"instruction", "input" (may be empty or absent), "output"}.
A record becomes the Alpaca prompt followed by the output and <|endoftext|>; batches are padded
to their longest example, and the targets of the prompt and of the padding are IGNORE_INDEX, so
only the response (and its end token) is trained. Evaluation: the masked loss on held-out records
and the exact match of greedy answers, with a few answers in the log. Runs under torchrun like
gpt2core.training.train (the same --device, --precision, --grad-accum, --compile, --init).
``python -m gpt2core.training.instruct_data`` makes a data set with checkable answers.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..text import tokenizer
from ..reference.config import GPT2Config
from ..decoding.generate import generate
from ..reference.model import GPT2
from .train import (IGNORE_INDEX, LOSS_PNG, SummedLoss, Trainer, TrainSettings, add_run_args, build_model,
                    describe_run, finish_distributed, plot_loss, setup_distributed, tuning_settings)

# The Stanford Alpaca template (tatsu-lab/stanford_alpaca), with and without an input.
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n")
ANSWER_TOKENS = 32   # the longest greedy answer evaluation waits for


def format_prompt(record: dict) -> str:
    """The Alpaca prompt of a record, up to and including '### Response:\\n'."""
    template = PROMPT_WITH_INPUT if record.get("input") else PROMPT_NO_INPUT
    return template.format(instruction=record["instruction"], input=record.get("input", ""))


def read_jsonl(path) -> list[dict]:
    """Records from a JSONL file; a bad line is a ValueError naming the file and line."""
    records = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e})") from None
        if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) for k in ("instruction", "output")) \
                or not isinstance(rec.get("input", ""), str) or not rec["instruction"].strip():
            raise ValueError(f"{path}:{n}: expected {{\"instruction\": text, \"input\": text, \"output\": text}}")
        records.append({"instruction": rec["instruction"], "input": rec.get("input", ""), "output": rec["output"]})
    return records


@dataclass(frozen=True)
class Example:
    """A record as token ids: the prompt, then the response and <|endoftext|>."""
    ids: tuple[int, ...]
    n_prompt: int

    @property
    def n_response(self) -> int:
        """Targets that carry loss: the response tokens and the end token."""
        return len(self.ids) - self.n_prompt


def encode_example(record: dict) -> Example:
    prompt = tokenizer.encode(format_prompt(record))
    return Example(tuple(prompt + tokenizer.encode(record["output"]) + [tokenizer.EOT_ID]), len(prompt))


def collate(examples: list[Example], pad_id: int = tokenizer.EOT_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs padded on the right with ``pad_id``, and targets shifted by one with the prompt and the
    padding set to IGNORE_INDEX. (B, T), (B, T), T = the longest example minus one.

    Right padding changes nothing before it: attention is causal, so a real position never sees a pad.
    """
    T = max(len(e.ids) for e in examples) - 1
    x = torch.full((len(examples), T), pad_id, dtype=torch.long)
    y = torch.full((len(examples), T), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        ids = torch.tensor(e.ids)
        x[i, :len(ids) - 1] = ids[:-1]
        # Target t is token t + 1: the first response token is the target of the prompt's last position.
        y[i, e.n_prompt - 1:len(ids) - 1] = ids[e.n_prompt:]
    return x, y


@torch.no_grad()
def masked_loss(model: GPT2, examples: list[Example], batch_size: int = 16) -> float:
    """Mean cross-entropy over the response tokens of ``examples`` (each token weighs the same)."""
    was_training = model.training
    model.eval()
    device, loss_fn = next(model.parameters()).device, SummedLoss(model)
    total, count = 0.0, 0
    for b in range(0, len(examples), batch_size):
        x, y = collate(examples[b:b + batch_size])
        total += float(loss_fn(x.to(device), y.to(device)))
        count += int((y != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / count if count else float("nan")


def answer(model: GPT2, record: dict, max_new_tokens: int = ANSWER_TOKENS) -> str:
    """The model's greedy response to a record, up to <|endoftext|>, without surrounding spaces."""
    was_training = model.training
    model.eval()
    prompt = tokenizer.encode(format_prompt(record))
    room = max(0, min(max_new_tokens, model.config.n_ctx - len(prompt)))
    out = generate(model, prompt, room, temperature=0.0, seed=0, stop_at_eot=True)
    model.train(was_training)
    return tokenizer.decode([t for t in out if t != tokenizer.EOT_ID]).strip()


def exact_match(model: GPT2, records: list[dict], max_new_tokens: int = ANSWER_TOKENS) -> tuple[float, list[dict]]:
    """Fraction of records whose greedy answer equals the output (both stripped), and every answer."""
    answers = []
    for rec in records:
        got = answer(model, rec, max_new_tokens)
        answers.append({**rec, "answer": got, "correct": got == rec["output"].strip()})
    return (sum(a["correct"] for a in answers) / len(answers) if answers else float("nan")), answers


def by_instruction(answers: list[dict]) -> dict[str, float]:
    """Exact match per instruction (task)."""
    groups: dict[str, list[bool]] = {}
    for a in answers:
        groups.setdefault(a["instruction"], []).append(a["correct"])
    return {k: sum(v) / len(v) for k, v in groups.items()}


@dataclass
class FineTuner(Trainer):
    """A Trainer whose step draws records instead of text windows (train_ids and val_ids stay empty)."""
    examples: list = field(default_factory=list)   # training records as Examples
    heldout: list = field(default_factory=list)    # held-out records (dicts), for exact match
    n_eval_records: int = 100                      # held-out records answered at each evaluation
    n_shown: int = 3                               # answers kept in the log per evaluation
    answer_tokens: int = ANSWER_TOKENS             # the longest greedy answer waited for
    skipped: int = 0                               # training records longer than the context

    @classmethod
    def from_records(cls, model: GPT2, train_records: list[dict], heldout_records: list[dict],
                     settings: TrainSettings, n_eval_records: int = 100) -> "FineTuner":
        n_ctx = model.config.n_ctx
        encoded = [encode_example(r) for r in train_records]
        examples = [e for e in encoded if len(e.ids) - 1 <= n_ctx]
        if not examples:
            raise ValueError(f"no training record fits the context of {n_ctx} tokens")
        heldout = [r for r in heldout_records if len(encode_example(r).ids) - 1 <= n_ctx]
        if not heldout:
            raise ValueError(f"no held-out record fits the context of {n_ctx} tokens")
        empty = torch.empty(0, dtype=torch.long)
        return cls(model, settings, empty, empty, examples=examples, heldout=heldout,
                   n_eval_records=n_eval_records, skipped=len(encoded) - len(examples))

    def micro_batches(self) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
        """As Trainer's: the global batch of records from the (seed, step) generator, this rank's slice,
        and the number of response tokens in the whole global batch (the loss is their mean)."""
        s = self.settings
        per_rank = s.batch_size * s.grad_accum
        g = torch.Generator().manual_seed(s.seed * 1_000_003 + self.step)
        picks = torch.randint(0, len(self.examples), (per_rank * self.world_size,), generator=g).tolist()
        n_targets = sum(self.examples[i].n_response for i in picks)
        mine = picks[self.rank * per_rank:(self.rank + 1) * per_rank]
        return [collate([self.examples[i] for i in mine[k * s.batch_size:(k + 1) * s.batch_size]])
                for k in range(s.grad_accum)], n_targets

    def eval_now(self) -> dict:
        s = self.settings
        held = self.heldout[:self.n_eval_records]
        val_loss = masked_loss(self.model, [encode_example(r) for r in held], s.batch_size)
        em, answers = exact_match(self.model, held, self.answer_tokens)
        entry = {"step": self.step, "val_loss": val_loss, "exact_match": em, "n_eval": len(held),
                 "exact_match_by_instruction": by_instruction(answers), "answers": answers[:self.n_shown]}
        self.log["eval"].append(entry)
        return entry


def card(doc: dict, before: dict, after: dict, seconds: float, command: str) -> str:
    """A short model card: every figure read from the run."""
    info, cfg = doc["run"], doc["config"]
    rows = "\n".join(f"| {k} | {before['exact_match_by_instruction'].get(k, 0):.0%} | {v:.0%} |"
                     for k, v in after["exact_match_by_instruction"].items())
    shown = "\n".join(f"- {a['instruction']} `{a['input']}` -> `{a['answer']}` "
                      f"({'right' if a['correct'] else 'expected `' + a['output'] + '`'})" for a in after["answers"])
    return f"""# Instruction-tuned GPT-2 ({cfg['n_layer']} layers, width {cfg['n_embd']})

Fine-tuned from {doc.get('init') or 'random weights'} on {doc['data']['train_records']:,} records of
`{doc['data']['train']}` (Alpaca template, loss on the response tokens only), {doc['step']} steps,
effective batch {info['effective_batch']}, {info['device']}, {info['precision']}, {seconds:.0f} s.

Exact match on {after['n_eval']} held-out records (greedy answers): **{before['exact_match']:.1%} before,
{after['exact_match']:.1%} after**. Held-out response loss {before['val_loss']:.3f} -> {after['val_loss']:.3f}.

| instruction | before | after |
|---|---|---|
{rows}

Answers after training:
{shown}

![loss curve]({LOSS_PNG})

Command: `{command}`
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpt2core.training.finetune", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="training records, JSONL")
    ap.add_argument("--heldout", default=None, help="held-out records, JSONL (default: the last --heldout-fraction)")
    ap.add_argument("--heldout-fraction", type=float, default=0.1)
    ap.add_argument("--eval-records", type=int, default=100, help="held-out records answered at each evaluation")
    ap.add_argument("--resume", action="store_true", help="continue from --out")
    add_run_args(ap, steps=300, batch_size=16, unit="records")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = setup_distributed(args.device)
        settings = tuning_settings(args)
        records = read_jsonl(args.data)
        if args.heldout:
            train_records, heldout_records = records, read_jsonl(args.heldout)
        else:
            n_held = max(1, int(len(records) * args.heldout_fraction))
            train_records, heldout_records = records[:-n_held], records[-n_held:]
    except (ValueError, OSError) as e:
        ap.error(str(e))

    cfg = GPT2Config(n_ctx=args.n_ctx, n_embd=args.n_embd, n_head=args.n_head, n_layer=args.n_layer,
                     dropout=args.dropout)
    torch.manual_seed(args.seed)   # the same initial weights on every rank
    model = build_model(args.init, cfg, args.dropout).to(device)
    tuner = FineTuner.from_records(model, train_records, heldout_records, settings, args.eval_records)
    main_rank = tuner.rank == 0
    say = (lambda msg: print(msg, file=sys.stderr)) if main_rank else (lambda msg: None)  # noqa: E731
    out = Path(args.out)
    say(f"{len(tuner.examples):,} training records ({tuner.skipped} longer than the context skipped), "
        f"{len(tuner.heldout):,} held out, {model.num_params():,} parameters"
        f"{f', from {args.init}' if args.init else ''}")
    mean_len = sum(len(e.ids) for e in tuner.examples) / len(tuner.examples)
    say(describe_run(tuner, round(mean_len)).replace("tokens per step", "tokens per step (mean record length)"))
    if args.resume:
        tuner.load_state(out)
        say(f"resumed at step {tuner.step}")
    tuner.log["run"] = tuner.run_info()

    def report(e: dict) -> None:
        say(f"step {e['step']}: held-out response loss {e['val_loss']:.4f}, exact match {e['exact_match']:.1%} "
            f"of {e['n_eval']}")
        for a in e["answers"]:
            say(f"    {a['instruction']} {a['input']!r} -> {a['answer']!r} ({'right' if a['correct'] else 'wrong'})")

    if tuner.step == 0 and main_rank:
        report(tuner.eval_now())   # the "before" figures
    t0, done0 = time.perf_counter(), tuner.step
    for event in tuner.run():
        if "eval" in event:
            report(event["eval"])
        elif main_rank and event["step"] % 10 == 0:
            say(f"step {event['step']}: loss {event['loss']:.4f}")
    seconds = time.perf_counter() - t0
    tuner.log["seconds"] = seconds
    tuner.log["records_per_second"] = (tuner.step - done0) * tuner.effective_batch / max(1e-9, seconds)
    if main_rank:
        command = ("torchrun ... -m gpt2core.training.finetune " if tuner.world_size > 1 else "python -m gpt2core.training.finetune ") \
            + " ".join(argv if argv is not None else sys.argv[1:])
        extra = {"init": args.init, "command": command, "kind": "instruction fine-tuning (Alpaca template)",
                 "data": {"train": Path(args.data).name, "train_records": len(tuner.examples),
                          "heldout": Path(args.heldout).name if args.heldout else None,
                          "heldout_records": len(tuner.heldout)}}
        before, after = tuner.log["eval"][0], tuner.log["eval"][-1]
        extra["exact_match"] = {"before": before["exact_match"], "after": after["exact_match"],
                                "records": after["n_eval"]}
        tuner.save(out, extra=extra)
        plot_loss(tuner.log, out / LOSS_PNG)
        doc = json.loads((out / "config.json").read_text())
        (out / "README.md").write_text(card(doc, before, after, seconds, command), encoding="utf-8")
        say(f"exact match {before['exact_match']:.1%} -> {after['exact_match']:.1%} on {after['n_eval']} "
            f"held-out records; {seconds:.0f} s; wrote {out}")
    finish_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
