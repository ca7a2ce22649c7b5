"""gpt2core.training.data and gpt2core.training.train: windows, splits, one step, schedule, decay groups, resume, plot."""
import pytest
import torch

from gpt2core import GPT2, get_config
from gpt2core.training.data import SlidingWindowDataset, make_loaders, random_batch, split_ids
from gpt2core.training.train import (LOG_FILE, OPTIM_FILE, Trainer, TrainSettings, evaluate, lr_at, make_optimizer,
                            plot_loss, sample_text)
from gpt2core.reference.weights import WEIGHTS_FILE



def nano(seed=0, dropout=0.0, n_ctx=16):
    torch.manual_seed(seed)
    return GPT2(get_config("tiny", n_layer=1, n_embd=16, n_head=2, n_ctx=n_ctx, dropout=dropout))


def fake_ids(n, seed=0):
    """Token ids with some structure (a repeating phrase plus noise), so training has something to learn."""
    g = torch.Generator().manual_seed(seed)
    phrase = torch.tensor([464, 3797, 3332, 319, 262, 2603, 13, 198])
    ids = phrase.repeat(n // len(phrase) + 1)[:n].clone()
    noise = torch.rand(n, generator=g) < 0.1
    ids[noise] = torch.randint(0, 50257, (int(noise.sum()),), generator=g)
    return ids


# ---- data ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("length,n,stride", [(100, 8, 8), (100, 8, 3), (100, 8, 1), (9, 8, 4), (10, 8, 5),
                                             (8, 8, 1), (57, 10, 7)])
def test_window_count(length, n, stride):
    ds = SlidingWindowDataset(torch.arange(length), n, stride)
    expected = (length - n - 1) // stride + 1 if length >= n + 1 else 0
    assert len(ds) == expected
    # Independent count: every start s with s + n + 1 <= length, stepping by stride.
    assert len(ds) == len(range(0, length - n, stride))
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_window_stride_and_shifted_targets():
    ids = torch.arange(1000, 1100)   # distinct values: a window's first id tells where it starts
    n, stride = 12, 5
    ds = SlidingWindowDataset(ids, n, stride)
    starts = []
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == y.shape == (n,)
        assert torch.equal(x[1:], y[:-1])              # target = input shifted by one
        start = int(x[0]) - 1000
        assert torch.equal(x, ids[start:start + n]) and torch.equal(y, ids[start + 1:start + n + 1])
        starts.append(start)
    assert starts[0] == 0
    assert all(b - a == stride for a, b in zip(starts, starts[1:]))
    assert starts[-1] + n + 1 <= len(ids) < starts[-1] + stride + n + 1   # the last window that fits


def test_bad_window_settings():
    with pytest.raises(ValueError, match="context_length and stride"):
        SlidingWindowDataset(torch.arange(10), 0, 1)


def test_split_and_loaders_are_disjoint():
    ids = torch.arange(500)   # distinct ids: any overlap would show up as a shared value
    train_ids, val_ids = split_ids(ids, 0.2)
    assert len(train_ids) == 400 and len(val_ids) == 100
    assert torch.equal(torch.cat([train_ids, val_ids]), ids)          # a split, nothing lost
    train, val = make_loaders(ids, context_length=10, stride=5, batch_size=4, val_fraction=0.2)
    seen_train = {int(t) for x, y in train for t in torch.cat([x.flatten(), y.flatten()])}
    seen_val = {int(t) for x, y in val for t in torch.cat([x.flatten(), y.flatten()])}
    assert seen_train and seen_val
    assert seen_train.isdisjoint(seen_val)
    assert max(seen_train) < 400 <= min(seen_val)
    with pytest.raises(ValueError, match="val_fraction"):
        split_ids(ids, 1.0)


def test_random_batch_windows_are_shifted():
    ids = torch.arange(200)
    x, y = random_batch(ids, 16, 5, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 16)
    assert torch.equal(y, x + 1)
    with pytest.raises(ValueError, match="needs more than"):
        random_batch(torch.arange(10), 16, 2, torch.Generator())


# ---- optimiser and schedule ---------------------------------------------------------------------

def test_one_step_lowers_the_loss_on_its_batch():
    model = nano()
    settings = TrainSettings(steps=10, batch_size=4, lr=1e-2, min_lr=1e-3, warmup_steps=0, eval_every=10)
    trainer = Trainer.from_ids(model, fake_ids(400), settings)
    # The batch train_step will draw at step 0 (same generator seed as in Trainer.train_step).
    g = torch.Generator().manual_seed(settings.seed * 1_000_003 + 0)
    x, y = random_batch(trainer.train_ids, model.config.n_ctx, settings.batch_size, g)
    with torch.no_grad():
        before = float(model.loss(x, y))
    step_loss = trainer.train_step()
    with torch.no_grad():
        after = float(model.loss(x, y))
    assert step_loss == pytest.approx(before, rel=1e-5)   # the step really trained on this batch
    assert after < before - 0.05
    assert trainer.step == 1 and trainer.log["train"][0]["lr"] == pytest.approx(1e-2)


def test_lr_warms_up_then_decays_to_min_lr():
    s = TrainSettings(steps=100, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    lrs = [lr_at(i, s) for i in range(s.steps + 1)]
    warm = lrs[:s.warmup_steps]
    assert warm == pytest.approx([s.lr * (i + 1) / s.warmup_steps for i in range(s.warmup_steps)])
    assert all(a < b for a, b in zip(warm, warm[1:]))                       # rising
    assert max(lrs) == pytest.approx(s.lr)
    decay = lrs[s.warmup_steps:]
    assert all(a >= b for a, b in zip(decay, decay[1:]))                    # never rising again
    assert decay[0] == pytest.approx(s.lr) and lrs[s.steps] == pytest.approx(s.min_lr)
    assert min(lrs[1:]) >= s.min_lr - 1e-12
    # Half-way through the decay: cosine gives the mean of lr and min_lr.
    assert lr_at(s.warmup_steps + (s.steps - s.warmup_steps) // 2, s) == pytest.approx((s.lr + s.min_lr) / 2)


def test_weight_decay_only_on_matrices():
    model = nano()
    s = TrainSettings(weight_decay=0.1)
    opt = make_optimizer(model, s)
    decay, no_decay, embedding = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0 and embedding["weight_decay"] == 0.1
    assert all(p.dim() == 2 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"] + embedding["params"]}
    assert [names[id(p)] for p in embedding["params"]] == ["wte.weight"]
    assert "wte.weight" in decayed and "blocks.0.attn.c_attn.weight" in decayed
    assert not any(n.endswith(".bias") or ".ln_" in n or n.startswith("ln_f") for n in decayed)
    # Every parameter is in exactly one group (the tied head counts once).
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())


def test_bad_settings_and_too_short_text():
    with pytest.raises(ValueError, match="steps"):
        TrainSettings(steps=0)
    with pytest.raises(ValueError, match="lr"):
        TrainSettings(lr=0)
    with pytest.raises(ValueError, match="needs at least 18"):
        Trainer.from_ids(nano(), fake_ids(12), TrainSettings(steps=2, val_fraction=0.1))


# ---- evaluation, sampling, resume ---------------------------------------------------------------

def test_evaluate_matches_a_manual_mean():
    model = nano().eval()
    ids = fake_ids(16 * 6 + 1)
    ds = SlidingWindowDataset(ids, 16, 16)
    with torch.no_grad():
        manual = [float(model.loss(torch.stack([ds[i][0] for i in b]), torch.stack([ds[i][1] for i in b])))
                  for b in ([0, 1, 2, 3], [4, 5])]
    assert evaluate(model, ids, batch_size=4, max_batches=10) == pytest.approx(sum(manual) / 2, rel=1e-6)
    assert evaluate(model, ids, batch_size=4, max_batches=1) == pytest.approx(manual[0], rel=1e-6)


def test_sample_text_is_reproducible_and_starts_with_the_prompt():
    model = nano()
    a, b = sample_text(model, "Hello", 8), sample_text(model, "Hello", 8)
    assert a == b and a.startswith("Hello")
    assert model.training   # sample_text restores the mode it found


def run_settings(steps):
    return TrainSettings(steps=steps, batch_size=2, lr=5e-3, min_lr=5e-4, warmup_steps=2, eval_every=3,
                         eval_batches=1, sample_prompt="The", sample_tokens=4, seed=7)


def test_save_then_resume_equals_training_straight(tmp_path):
    K = 6
    ids = fake_ids(300)
    straight = Trainer.from_ids(nano(seed=1, dropout=0.1), ids, run_settings(K))
    for _ in straight.run():
        pass

    first = Trainer.from_ids(nano(seed=1, dropout=0.1), ids, run_settings(K))
    for _ in first.run(until=K // 2):
        pass
    assert first.step == K // 2
    folder = first.save(tmp_path / "ckpt")
    assert {WEIGHTS_FILE, OPTIM_FILE, LOG_FILE, "config.json"} <= {p.name for p in folder.iterdir()}

    # A different initialisation: everything must come from the checkpoint.
    resumed = Trainer.from_ids(nano(seed=99, dropout=0.1), ids, run_settings(K))
    resumed.load_state(folder)
    assert resumed.step == K // 2
    for _ in resumed.run():
        pass

    assert resumed.step == straight.step == K
    a, b = dict(straight.model.named_parameters()), dict(resumed.model.named_parameters())
    assert a.keys() == b.keys()
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert resumed.log == straight.log
    assert [e["step"] for e in straight.log["eval"]] == [3, 6]
    for n in a:   # the optimiser moments too, so a further resume would also match
        sa, sb = straight.optimizer.state[a[n]], resumed.optimizer.state[b[n]]
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
        assert float(sa["step"]) == float(sb["step"]) == K


def test_plot_loss_writes_a_png(tmp_path):
    log = {"train": [{"step": i + 1, "loss": 10 - i * 0.1} for i in range(20)],
           "eval": [{"step": 10, "val_loss": 9.2}, {"step": 20, "val_loss": 8.3}]}
    path = tmp_path / "loss.png"
    plot_loss(log, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000


def test_reset_unseen_embeddings_redraws_only_the_ids_the_text_lacks():
    from gpt2core.text.tokenizer import EOT_ID
    from gpt2core.training.train import reset_unseen_embeddings
    model = nano()
    before = model.wte.weight.detach().clone()                          # (V, d)
    ids = torch.tensor([5, 7, 7, 900, EOT_ID, 5])
    n = reset_unseen_embeddings(model, ids)
    after = model.wte.weight.detach()
    seen = torch.zeros(len(before), dtype=torch.bool)
    seen[[5, 7, 900]] = True
    assert n == len(before) - 3                     # the <|endoftext|> separator counts as unseen
    assert torch.equal(after[seen], before[seen])
    assert not torch.equal(after[EOT_ID], before[EOT_ID])
    assert abs(float(after[~seen].std()) - 0.02) < 0.001
    # The rows come from seed 0 in id order: the same call on another model draws the same rows.
    other = nano(seed=1)
    reset_unseen_embeddings(other, ids)
    assert torch.equal(other.wte.weight[~seen], after[~seen])
    assert model.lm_head.weight is model.wte.weight                      # still tied


def test_spread_embeddings_adds_seeded_noise_of_the_given_size_to_every_row():
    from gpt2core.training.train import spread_embeddings
    model = nano()
    before = model.wte.weight.detach().clone()                          # (V, d)
    spread_embeddings(model, 0.01)
    added = model.wte.weight.detach() - before
    assert (added != 0).all(dim=1).all()                               # every row moves
    assert abs(float(added.std()) - 0.01) < 0.0005
    other = nano(seed=1)
    before_other = other.wte.weight.detach().clone()
    spread_embeddings(other, 0.01)                                      # seed 0: the same noise
    assert torch.allclose(other.wte.weight.detach() - before_other, added, atol=1e-6)
    assert model.lm_head.weight is model.wte.weight


def test_embedding_lr_scale_zero_freezes_the_token_embedding_and_trains_the_rest():
    model = nano()
    settings = TrainSettings(steps=3, batch_size=2, lr=1e-2, warmup_steps=1, weight_decay=0.1, eval_every=100,
                             embedding_lr_scale=0.0)
    wte, wpe = model.wte.weight.detach().clone(), model.wpe.weight.detach().clone()
    trainer = Trainer.from_ids(model, fake_ids(400), settings)
    for _ in range(3):
        trainer.train_step()
    assert torch.equal(model.wte.weight, wte)                           # frozen, weight decay too
    assert not torch.equal(model.wpe.weight, wpe)
    groups = {g["lr_scale"]: g for g in trainer.optimizer.param_groups}
    assert groups[0.0]["lr"] == 0.0 and groups[1.0]["lr"] > 0
    with pytest.raises(ValueError):
        TrainSettings(embedding_lr_scale=-1)


def test_the_model_card_says_when_the_embedding_learned_at_another_rate():
    from gpt2core.training.modelcard import embedding_lr_note
    assert embedding_lr_note({}) == "" and embedding_lr_note({"embedding_lr_scale": 1.0}) == ""
    assert embedding_lr_note({"embedding_lr_scale": 0.0}) == " (the token embedding frozen)"
    assert "0.1 times" in embedding_lr_note({"embedding_lr_scale": 0.1})
