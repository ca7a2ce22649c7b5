"""Instruction data whose answers a program can check: {"instruction", "input", "output"} records.

python -m gpt2core.training.instruct_data --out data/instruct [--train 3000 --heldout 300 --seed 0]

Writes train.jsonl and heldout.jsonl (one JSON record a line). Six tasks, each with one fixed
phrasing: reverse the words, write them in capitals, count the items of a list, the next number
of an arithmetic sequence, sort numbers, add two numbers. Seeded, so the same arguments give the
same files; no held-out (instruction, input) pair occurs in train, so exact match on the held-out
split measures answers the model has not seen.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Callable

# Short, common words (all but "melon" one GPT-2 token with a leading space), so inputs stay short.
WORDS = ("apple river stone cloud green house light water music paper table horse night bread "
         "glass happy quiet story winter summer dream chair money field queen king ocean bird "
         "train forest smile silver garden window letter orange yellow friend sugar metal shadow "
         "doctor market spring castle dragon rabbit candle pencil").split()
ITEMS = "apple pear plum grape lemon melon peach cherry mango onion carrot potato bean".split()

Record = dict[str, str]


def reverse_words(rng: random.Random) -> Record:
    words = rng.sample(WORDS, rng.randint(3, 5))
    return {"instruction": "Reverse the order of the words.", "input": " ".join(words),
            "output": " ".join(reversed(words))}


def uppercase(rng: random.Random) -> Record:
    words = rng.sample(WORDS, rng.randint(2, 4))
    return {"instruction": "Write the words in capital letters.", "input": " ".join(words),
            "output": " ".join(words).upper()}


def count_items(rng: random.Random) -> Record:
    n = rng.randint(1, 8)
    items = [rng.choice(ITEMS) for _ in range(n)]   # repeats allowed: count items, not kinds
    return {"instruction": "How many items are in the list?", "input": ", ".join(items), "output": str(n)}


def next_number(rng: random.Random) -> Record:
    start, step = rng.randint(0, 99), rng.randint(1, 12)
    seq = [start + step * k for k in range(5)]
    return {"instruction": "What number comes next in the sequence?", "input": ", ".join(map(str, seq[:4])),
            "output": str(seq[4])}


def sort_numbers(rng: random.Random) -> Record:
    nums = rng.sample(range(100), rng.randint(3, 5))
    return {"instruction": "Sort the numbers from smallest to largest.", "input": " ".join(map(str, nums)),
            "output": " ".join(map(str, sorted(nums)))}


def add_numbers(rng: random.Random) -> Record:
    a, b = rng.randint(0, 50), rng.randint(0, 50)
    return {"instruction": "Add the two numbers.", "input": f"{a} + {b}", "output": str(a + b)}


TASKS: dict[str, Callable[[random.Random], Record]] = {f.__name__: f for f in (
    reverse_words, uppercase, count_items, next_number, sort_numbers, add_numbers)}


def make_split(n_train: int, n_heldout: int, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """Records cycling through the tasks in turn (so every task has its share), shuffled, deduplicated;
    the held-out records are drawn after train and skip any (instruction, input) train holds."""
    rng = random.Random(seed)
    names = list(TASKS)
    seen: set[tuple[str, str]] = set()

    def draw(n: int) -> list[Record]:
        out, tries = [], 0
        while len(out) < n:
            tries += 1
            if tries > 50 * n + 1000:
                raise ValueError(f"could not draw {n} distinct records (the tasks have too few inputs)")
            rec = TASKS[names[len(out) % len(names)]](rng)
            key = (rec["instruction"], rec["input"])
            if key not in seen:
                seen.add(key)
                out.append(rec)
        rng.shuffle(out)
        return out

    return draw(n_train), draw(n_heldout)


def write_jsonl(records: list[Record], path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpt2core.training.instruct_data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for train.jsonl and heldout.jsonl")
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--heldout", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    train, heldout = make_split(args.train, args.heldout, args.seed)
    out = Path(args.out)
    for name, recs in (("train.jsonl", train), ("heldout.jsonl", heldout)):
        print(f"wrote {write_jsonl(recs, out / name)} ({len(recs)} records)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
