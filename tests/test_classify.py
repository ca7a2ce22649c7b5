"""gpt2core.training.classify and gpt2core.training.classify_data: scene parsing and the split, the last-token head, HF parity."""
import json

import pytest
import torch

from gpt2core import GPT2, get_config
from gpt2core.text import tokenizer
from gpt2core.training.classify import (HEAD_FILE, ClassifierTrainer, Example, GPT2Classifier, attach_head,
                               body_fingerprint, collate, encode_records, features, load_classifier, main,
                               majority_baseline, metrics, read_head, read_records, save_classifier, save_head)
from gpt2core.training.classify_data import (balance, balanced_sample, parse_scenes, play_records, read_plays,
                                    speeches, split_by_scene)
from gpt2core.training.classify_data import main as data_main
from gpt2core.training.train import TrainSettings
from gpt2core.reference.weights import WeightsError

# Two tiny plays in the Gutenberg texts' styles: headings "ACT I." / "SCENE 1." / "Scene II.--",
# "ACT FIRST", "ACT II. SCENE I.", a prologue, speakers as "Ber." or in capitals with no blank line.
PLAY_A = """THE TRAGEDY OF A

PERSONS REPRESENTED.
Ber., a soldier.

SCENE: Somewhere.

THE PROLOGUE

Chor.
Two households, both alike in dignity, here begin.

ACT I.

SCENE 1. A platform.

[Enter Bernardo and Francisco.]

Ber.
Who's there? Stand and unfold yourself now.

Fran.
Nay, answer me: stand, and unfold yourself.
[Aside.] Long live the king tonight.

Scene II.--A room.

KING.
Welcome, dear friends, to our cold court today.
One more line of verse.
Two more lines of verse here.
Three more lines of verse here.
A fifth line that starts a second piece.

ACT II. SCENE I.

QUEEN.
Good night, sweet prince, and flights of angels sing.
"""

PLAY_B = """A COMEDY

ACT FIRST

SCENE I
THESEUS
Now, fair Hippolyta, our nuptial hour draws on.
HIPPOLYTA
Four days will quickly steep themselves in nights.

SCENE II. The wood.

PUCK.
Lord, what fools these mortals be, said the sprite.

ACT SECOND

SCENE I. The same.

PUCK.
I'll put a girdle round about the earth tonight.

SCENE II. Another part.

PUCK.
Up and down, up and down, I will lead them.
"""


def test_parse_finds_the_scenes_and_the_speeches():
    scenes = parse_scenes(PLAY_A)
    assert [(s.act, s.scene) for s in scenes] == [(0, 0), (1, 0), (1, 1), (1, 2), (2, 1)]
    by_key = {(s.act, s.scene): speeches(s.lines) for s in scenes}
    assert by_key[(0, 0)] == [["Two households, both alike in dignity, here begin."]]
    # Speaker names and [stage directions] are gone; a direction inside a speech too.
    assert by_key[(1, 1)] == [["Who's there? Stand and unfold yourself now."],
                              ["Nay, answer me: stand, and unfold yourself.", "Long live the king tonight."]]
    assert "PERSONS" not in str(by_key) and "Somewhere" not in str(by_key)
    # An act heading opens scene 0 of its act (here empty: the scene heading follows at once).
    assert [(s.act, s.scene) for s in parse_scenes(PLAY_B)] == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    # Speakers in capitals with no blank line between the speeches (as some texts print them).
    assert speeches(parse_scenes(PLAY_B)[1].lines) == [["Now, fair Hippolyta, our nuptial hour draws on."],
                                                       ["Four days will quickly steep themselves in nights."]]
    records = play_records(PLAY_A, "a", "tragedy")
    king = [r["text"] for r in records if (r["act"], r["scene"]) == (1, 2)]
    assert king == ["Welcome, dear friends, to our cold court today.\nOne more line of verse.\n"
                    "Two more lines of verse here.\nThree more lines of verse here.",
                    "A fifth line that starts a second piece."]           # speeches cut at 4 lines
    assert all(set(r) == {"text", "label", "play", "act", "scene"} and r["label"] == "tragedy" for r in records)


def test_split_keeps_every_scene_on_one_side(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    # Six plays of eight scenes each, every scene with a few speeches.
    for p in range(6):
        body = "\n".join(f"ACT {a}.\n\n" + "\n".join(
            f"SCENE {s}.\n\n" + "\n".join(f"SPEAKER.\nPlay {p} act {a} scene {s} speech {k} is here.\n" for k in range(3))
            for s in (1, 2)) for a in range(1, 5))
        (folder / f"play{p}_gut.txt").write_text(f"TITLE\n\n{body}")
    (folder / "poems_gut.txt").write_text("Shall I compare thee to a summer's day?\n")
    genres = {f"play{p}": ("comedy", "history", "tragedy")[p % 3] for p in range(6)}
    records, skipped = read_plays(folder, genres)
    assert skipped == {"poems": "not in the genre table"}
    assert len(records) == 6 * 8 * 3 and len({(r["play"], r["act"], r["scene"]) for r in records}) == 48
    train, held = split_by_scene(records, heldout_fraction=0.25, seed=0)
    key = lambda r: (r["play"], r["act"], r["scene"])  # noqa: E731
    assert not {key(r) for r in train} & {key(r) for r in held}                  # no scene on both sides
    assert len(train) + len(held) == len(records)
    assert {r["play"] for r in held} == set(genres)                              # 2 of 8 scenes of each play
    assert all(sum(1 for k in {key(r) for r in held} if k[0] == p) == 2 for p in genres)
    assert split_by_scene(records, 0.25, seed=0) == (train, held) != split_by_scene(records, 0.25, seed=1)
    assert balance(train) == {k: (n, n / len(train)) for k, n in
                              ((g, sum(r["label"] == g for r in train)) for g in ("comedy", "history", "tragedy"))}
    small = balanced_sample(train, per_label=3, min_words=4)
    assert sorted(r["label"] for r in small) == ["comedy"] * 3 + ["history"] * 3 + ["tragedy"] * 3
    with pytest.raises(ValueError, match="no \\*_gut.txt files"):
        read_plays(tmp_path / "nowhere")


def test_data_cli_writes_the_splits(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "hamlet_gut.txt").write_text(PLAY_A)
    (folder / "tempest_gut.txt").write_text(PLAY_B)
    (folder / "sonnets_gut.txt").write_text("Shall I compare thee to a summer's day?\n")
    assert data_main([str(folder), "--out", str(tmp_path / "genre"), "--small", str(tmp_path / "small.jsonl"),
                      "--small-train", "1", "--small-heldout", "1"]) == 0
    train = read_records(tmp_path / "genre" / "train.jsonl")
    held = read_records(tmp_path / "genre" / "heldout.jsonl")
    assert {r["label"] for r in train + held} == {"tragedy", "comedy"}           # First Folio genres; no poems
    assert not {(r["play"], r["act"], r["scene"]) for r in train} & {(r["play"], r["act"], r["scene"]) for r in held}
    small = read_records(tmp_path / "small.jsonl")
    assert {r["split"] for r in small} <= {"train", "heldout"}
    held_keys = {(r["play"], r["act"], r["scene"]) for r in held}
    assert all(((r["play"], r["act"], r["scene"]) in held_keys) == (r["split"] == "heldout") for r in small)


# ---- the classifier ------------------------------------------------------------------------------

def tiny_body(seed=0, n_layer=2):
    torch.manual_seed(seed)
    return GPT2(get_config("tiny", n_layer=n_layer, n_embd=16, n_head=2, n_ctx=32, dropout=0.0))


def easy_set(n, seed):
    """Label 0 ends in ' apple', label 1 in ' stone', after random common words: the last token says it."""
    g = torch.Generator().manual_seed(seed)
    words = " the king said that we shall go to night and day".split()
    out = []
    for i in range(n):
        k = int(torch.randint(2, 6, (1,), generator=g))
        text = " ".join(words[int(j)] for j in torch.randint(0, len(words), (k,), generator=g))
        out.append({"text": text + (" apple" if i % 2 == 0 else " stone"), "label": ("fruit", "rock")[i % 2]})
    return out


def test_collate_pads_on_the_right_and_reads_the_last_real_token():
    body = tiny_body()
    clf = GPT2Classifier(body, ["a", "b", "c"]).eval()
    examples = [Example((5, 6, 7), 2), Example((8,), 0)]
    x, y = collate(examples)
    assert x.tolist() == [[5, 6, 7], [8, tokenizer.EOT_ID, tokenizer.EOT_ID]] and y.tolist() == [[2, 2], [0, 0]]
    with torch.no_grad():
        batched = clf(x, y[:, 1])
        one = torch.cat([clf(torch.tensor([e.ids])) for e in examples])
    torch.testing.assert_close(batched, one, rtol=1e-5, atol=1e-6)       # padding changes nothing


def test_the_head_trains_and_head_only_leaves_the_body_alone():
    labels = ["fruit", "rock"]
    train = encode_records(easy_set(64, 0), labels, 32)
    held = encode_records(easy_set(16, 1), labels, 32)
    changed = {}
    for mode in ("head", "last", "all"):
        clf = GPT2Classifier(tiny_body(), labels).set_trainable(mode)
        before = {k: v.clone() for k, v in clf.body.state_dict().items()}
        settings = TrainSettings(steps=40, batch_size=16, lr=3e-2, min_lr=3e-3, warmup_steps=2, eval_every=40)
        trainer = ClassifierTrainer.from_examples(clf, train, held, settings)
        assert (trainer.feats is not None) == (mode == "head")             # head only: body outputs cached
        first = trainer.eval_now()
        losses = [e["loss"] for e in trainer.run()]
        last = trainer.log["eval"][-1]
        assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses       # the loss falls
        assert last["val_loss"] < first["val_loss"] and last["accuracy"] == 1.0
        changed[mode] = {k for k, v in clf.body.state_dict().items() if not torch.equal(v, before[k])}
    assert changed["head"] == set()                                          # not one body weight moved
    assert changed["last"] and all(k.startswith(("blocks.1.", "ln_f.")) for k in changed["last"])
    assert {"wte.weight", "blocks.0.attn.c_attn.weight"} <= changed["all"]


def test_modes_set_what_trains():
    clf = GPT2Classifier(tiny_body(n_layer=3), ["a", "b"])
    d, C = 16, 2
    assert clf.set_trainable("head").trainable_params() == d * C + C and clf.first_trainable() == 3
    block = sum(p.numel() for p in clf.body.blocks[0].parameters())
    assert clf.set_trainable("last", 2).trainable_params() == 2 * block + 2 * d + d * C + C
    assert clf.first_trainable() == 1
    assert clf.set_trainable("all").first_trainable() == -1
    with pytest.raises(ValueError, match="last_blocks must be in 1..3"):
        clf.set_trainable("last", 4)
    with pytest.raises(ValueError, match="mode must be one of"):
        clf.set_trainable("middle")
    with pytest.raises(ValueError, match="two or more distinct labels"):
        GPT2Classifier(tiny_body(), ["a", "a"])


def test_logits_equal_hf_last_hidden_state_and_the_head(hf_tiny_dir):
    transformers = pytest.importorskip("transformers")
    from gpt2core.reference.weights import load_hf
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_tiny_dir, attn_implementation="eager").eval()
    torch.manual_seed(1)
    clf = GPT2Classifier(load_hf(hf_tiny_dir), ["comedy", "history", "tragedy"]).eval()
    with torch.no_grad():
        clf.head.weight.normal_(0, 0.5)
        clf.head.bias.normal_(0, 0.5)
    texts = ["Now is the winter of our discontent", "Alas, poor Yorick!", "If music be the food of love, play on"]
    examples = [Example(tuple(tokenizer.encode(t)), 0) for t in texts]
    x, y = collate(examples)
    with torch.no_grad():
        ours = clf(x, y[:, 1])                                                # (3, 3), one padded batch
        for i, e in enumerate(examples):
            h = hf(torch.tensor([e.ids]), output_hidden_states=True).hidden_states[-1][0, -1]    # (d,) after ln_f
            plain = h @ clf.head.weight.T + clf.head.bias
            torch.testing.assert_close(ours[i], plain, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(clf.hidden(torch.tensor([e.ids]))[0], h, rtol=1e-5, atol=1e-5)


def test_metrics_and_the_majority_baseline():
    logits = torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [0, 2.0, 0], [0, 0, 2.0]])
    labels = torch.tensor([0, 1, 0, 0])
    m = metrics(logits, labels, ["a", "b", "c"])
    assert m["accuracy"] == 0.5 and m["confusion"] == [[1, 1, 1], [0, 1, 0], [0, 0, 0]]
    assert m["recall"] == {"a": pytest.approx(1 / 3), "b": 1.0} and m["balanced_accuracy"] == pytest.approx(2 / 3)
    b = majority_baseline([1, 1, 1, 0], [0, 0, 1, 2, 0], ["a", "b", "c"])
    assert (b["majority"], b["accuracy"]) == ("a", 0.6)                       # the held-out set's commonest
    assert (b["train_majority"], b["train_majority_accuracy"]) == ("b", 0.2) and not b["tied"]
    assert majority_baseline([0, 1], [0, 1, 2, 2, 1, 0], ["a", "b", "c"])["tied"]   # balanced: any answer


def test_save_and_load_a_classifier(tmp_path):
    clf = GPT2Classifier(tiny_body(), ["x", "y", "z"]).eval()
    with torch.no_grad():
        clf.head.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    save_classifier(clf, tmp_path / "run")
    again = load_classifier(tmp_path / "run")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(again(ids), clf(ids))
    assert again.labels == ("x", "y", "z")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["classifier"]["labels"] == ["x", "y", "z"]
    head = save_head(clf, tmp_path / "h.safetensors", {"steps": 3})
    assert head.stat().st_size < 4096
    _, meta = read_head(head)
    assert meta["body_sha256"] == body_fingerprint(clf.body) != body_fingerprint(tiny_body(seed=1))
    assert meta["steps"] == "3" and meta["labels"] == ["x", "y", "z"]
    with pytest.raises(WeightsError, match="the head reads 16 features; the model has width 32"):
        attach_head(GPT2(get_config("tiny", n_layer=1, n_embd=32, n_head=2, n_ctx=16)), head)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(WeightsError, match="corrupt or not a safetensors file"):
        read_head(tmp_path / "bad.safetensors")
    with pytest.raises(WeightsError, match="not a classifier head"):
        read_head(tmp_path / "run" / "model.safetensors")


def test_cli_reports_accuracy_beside_the_baseline(tmp_path, capsys):
    data = [{**r, "split": "train"} for r in easy_set(40, 0)] + [{**r, "split": "heldout"} for r in easy_set(10, 1)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    out = tmp_path / "run"
    assert main(["--data", str(path), "--out", str(out), "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
                 "--n-ctx", "32", "--steps", "6", "--batch-size", "4", "--eval-every", "3", "--warmup", "1",
                 "--train", "last", "--device", "cpu", "--threads", "1"]) == 0
    log = json.loads((out / "log.json").read_text())
    doc = json.loads((out / "config.json").read_text())
    assert [e["step"] for e in log["eval"]] == [0, 3, 6] and len(log["train"]) == 6
    assert all({"val_loss", "accuracy", "balanced_accuracy", "confusion"} <= set(e) for e in log["eval"])
    assert log["baseline"]["accuracy"] == 0.5 and doc["accuracy"]["after"] == log["eval"][-1]["accuracy"]
    assert doc["classifier"]["labels"] == ["fruit", "rock"] and (out / HEAD_FILE).is_file()
    err = capsys.readouterr().err
    assert f"held-out accuracy {log['eval'][-1]['accuracy']:.1%} vs majority-class baseline 50.0%" in err
    card = (out / "README.md").read_text()
    assert f"**{log['eval'][-1]['accuracy']:.1%}**" in card and "python -m gpt2core.training.classify --data" in card
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "x"}\n{"text": 3}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected"):
        read_records(bad)


def test_features_are_the_hidden_states():
    clf = GPT2Classifier(tiny_body(), ["a", "b"]).set_trainable("head")
    examples = encode_records(easy_set(6, 3), ["fruit", "rock"], 32)
    feats = features(clf, examples, batch_size=4)                              # batches sorted by length
    with torch.no_grad():
        for i, e in enumerate(examples):
            torch.testing.assert_close(feats[i], clf.hidden(torch.tensor([e.ids]))[0], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_torchrun_processes_equal_one_process(tmp_path):
    """As gpt2core.training.train: global batch 4 = 2 examples x 2 gloo processes makes the same updates as one process
    with batch 4 (the last block and the head train, so the gradients go through DDP)."""
    import os
    import subprocess
    import sys

    from tests.test_train_scale import ROOT, free_port
    data = [{**r, "split": "train"} for r in easy_set(40, 0)] + [{**r, "split": "heldout"} for r in easy_set(10, 1)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    common = ["--data", str(path), "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--n-ctx", "32",
              "--steps", "4", "--eval-every", "4", "--warmup", "1", "--train", "last", "--device", "cpu",
              "--threads", "1", "--lr", "5e-3"]
    assert main([*common, "--out", str(tmp_path / "one"), "--batch-size", "4"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "gpt2core.training.classify", *common, "--out", str(tmp_path / "two"),
           "--batch-size", "2"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "effective batch 4 = 2 x 1 accumulation x 2 processes (gloo)" in done.stderr
    assert done.stderr.count("wrote ") == 1                                      # rank 0 alone writes
    a, b = (json.loads((tmp_path / n / "log.json").read_text()) for n in ("one", "two"))
    assert [e["loss"] for e in b["train"]] == pytest.approx([e["loss"] for e in a["train"]], rel=1e-5, abs=1e-6)
    one, two = load_classifier(tmp_path / "one"), load_classifier(tmp_path / "two")
    for (k, va), vb in zip(one.state_dict().items(), two.state_dict().values()):
        torch.testing.assert_close(vb, va, rtol=1e-4, atol=5e-5, msg=k)
