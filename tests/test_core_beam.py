"""gpt2core.decoding.beam against Hugging Face transformers' beam search on the same tiny random weights, and the
search tree it returns (parents, log-probs, kept / finished / winner) against the model run without a cache."""
import pytest
import torch

from gpt2core import EOT_ID, generate, load_hf
from gpt2core.decoding.beam import beam_search

transformers = pytest.importorskip("transformers")

PROMPT = [464, 2068, 7586, 21831, 18045, 625]
NEW = 12


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny random HF GPT2LMHeadModel, scaled so that its next-token distributions are peaked and
    differ from step to step (greedy and beam search then part ways), and the same weights in gpt2core."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "ln_" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.5)
            if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
                p.mul_(20)
        hf.transformer.wte.weight.mul_(8)
    folder = tmp_path_factory.mktemp("hf_beam")
    hf.save_pretrained(folder)
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
    return hf, load_hf(folder)


@pytest.fixture(scope="module")
def liked_token(pair):
    """A token the tiny model picks by itself (greedy's 4th), used as the EOS so that hypotheses end."""
    return generate(pair[1], PROMPT, 4, temperature=0.0, stop_at_eot=False)[3]


def hf_beams(hf, width, length_penalty, early_stopping, eos):
    out = hf.generate(torch.tensor([PROMPT]), max_new_tokens=NEW, num_beams=width, num_return_sequences=width,
                      do_sample=False, length_penalty=length_penalty, early_stopping=early_stopping,
                      eos_token_id=eos, pad_token_id=eos, output_scores=True, return_dict_in_generate=True)
    scores = getattr(out, "sequences_scores", None)   # num_beams=1 is transformers' greedy search: no scores
    return [s[len(PROMPT):].tolist() for s in out.sequences], None if scores is None else scores.tolist()


def padded(tokens, length, pad):
    return tokens + [pad] * (length - len(tokens))


CASES = [  # (width, length_penalty, early_stopping, eos: "eot" (never reached) or "liked")
    (3, 1.0, False, "eot"), (4, 2.0, False, "eot"), (2, 0.0, True, "eot"),
    (3, 0.0, False, "liked"), (3, 0.0, True, "liked"), (3, 1.0, False, "liked"), (3, 1.0, True, "liked"),
    (3, 2.0, False, "liked"), (5, 2.0, True, "liked"), (5, 0.0, False, "liked"), (2, 1.0, True, "liked"),
]


@pytest.mark.parametrize("width, length_penalty, early_stopping, eos", CASES,
                         ids=[f"w{w}-lp{lp:g}-es{int(es)}-{e}" for w, lp, es, e in CASES])
def test_same_sequences_and_scores_as_transformers(pair, liked_token, width, length_penalty, early_stopping, eos):
    hf, ours = pair
    eos_id = EOT_ID if eos == "eot" else liked_token
    expected, expected_scores = hf_beams(hf, width, length_penalty, early_stopping, eos_id)
    got = beam_search(ours, PROMPT, width, NEW, length_penalty, early_stopping, eos_token_id=eos_id)
    assert len(got.finished) == width
    assert [padded(f.token_ids, len(expected[0]), eos_id) for f in got.finished] == expected
    torch.testing.assert_close(torch.tensor([f.score for f in got.finished]), torch.tensor(expected_scores),
                               atol=1e-4, rtol=1e-5)
    lengths = [len(f.token_ids) for f in got.finished]
    if eos == "eot":
        assert lengths == [NEW] * width and got.steps == NEW
    else:   # hypotheses did end at the EOS (a long one may still have won), and early stopping cut the search short
        assert any(n.finished and n.token_id == eos_id and n.step < NEW - 1 for n in got.hypotheses)
        if early_stopping:
            assert got.steps < NEW and got.stop_reason.startswith("early stopping")


def test_the_length_penalty_and_early_stopping_change_the_answer(pair, liked_token):
    """The liked-EOS cases above are not all one answer: the settings matter there."""
    ours = pair[1]
    answers = {(lp, es): tuple(beam_search(ours, PROMPT, 3, NEW, lp, es, eos_token_id=liked_token).best.token_ids)
               for lp in (0.0, 2.0) for es in (True, False)}
    assert len(set(answers.values())) >= 2
    heuristic = beam_search(ours, PROMPT, 3, NEW, 0.0, False, eos_token_id=liked_token)
    assert heuristic.stop_reason.startswith("no running beam") and heuristic.steps < NEW


def test_beam_width_one_is_greedy(pair, liked_token):
    hf, ours = pair
    greedy = generate(ours, PROMPT, NEW, temperature=0.0, stop_at_eot=False)
    for lp in (0.0, 1.0, 2.0):
        assert beam_search(ours, PROMPT, 1, NEW, lp, False).best.token_ids == greedy
    assert beam_search(ours, PROMPT, 3, NEW).best.token_ids != greedy   # the tiny model's beams do part ways
    # Ending at a token: greedy stops there too (transformers' num_beams=1 is its greedy search).
    ends = beam_search(ours, PROMPT, 1, NEW, 1.0, True, eos_token_id=liked_token).best.token_ids
    assert ends == greedy[:4]
    expected, _ = hf_beams(hf, 1, 1.0, True, liked_token)
    assert padded(ends, len(expected[0]), liked_token) == expected[0]


def full_logprobs(model, ids):
    """log p of each next token given everything before it, from one forward pass without a cache."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids]))[0].float(), -1)


@pytest.mark.parametrize("width, eos", [(3, "eot"), (4, "liked")])
def test_the_tree(pair, liked_token, width, eos):
    ours = pair[1]
    eos_id = EOT_ID if eos == "eot" else liked_token
    r = beam_search(ours, PROMPT, width, NEW, 1.0, False, eos_token_id=eos_id, per_beam=7)
    nodes = r.hypotheses
    assert [n.id for n in nodes] == list(range(len(nodes)))
    for step in range(r.steps):
        here = [n for n in nodes if n.step == step]
        parents = {n.parent for n in here}
        previous_kept = [n.id for n in nodes if n.step == step - 1 and n.kept] if step else [-1]
        assert parents == set(previous_kept)                       # only the beams grow
        per_beam = max(2 * width, 7)
        assert len(here) == per_beam * len(previous_kept)
        assert sorted(n.rank for n in here if n.candidate) == list(range(2 * width))
        kept = sorted((n for n in here if n.kept), key=lambda n: n.rank)
        assert len(kept) == (width if step < r.steps - 1 else 0)
        # The kept ones are the best candidates that did not end.
        not_ended = sorted((n for n in here if n.candidate and n.token_id != eos_id), key=lambda n: n.rank)
        if kept:
            assert [n.id for n in kept] == [n.id for n in not_ended[:width]]
        for n in here:
            # The log-probs against the model run on the whole text, no cache: the reordered cache is right.
            path = r.path(n.id)
            text = PROMPT + [p.token_id for p in path]
            logp = full_logprobs(ours, text)
            assert n.token_logprob == pytest.approx(float(logp[len(text) - 2, n.token_id]), abs=2e-4)
            assert n.cum_logprob == pytest.approx(sum(p.token_logprob for p in path), abs=1e-3)
            assert n.score == pytest.approx(n.cum_logprob / (step + 1), rel=1e-5)
            if n.finished:
                assert n.candidate and n.rank < width and (n.token_id == eos_id or step == NEW - 1)
    best = r.best
    winners = [n for n in nodes if n.winner]
    assert [n.token_id for n in winners] == best.token_ids
    assert winners[-1].id == best.hypothesis and winners[-1].finished
    assert best.cum_logprob == pytest.approx(sum(best.token_logprobs))
    assert all(a.score >= b.score for a, b in zip(r.finished, r.finished[1:]))
    assert {f.hypothesis for f in r.finished} <= {n.id for n in nodes if n.finished}
    if eos == "liked":
        assert any(n.finished and n.step < NEW - 1 for n in nodes)


def test_between_steps_is_called_before_each_later_step(pair):
    calls = []
    r = beam_search(pair[1], PROMPT, 2, 5, between_steps=lambda: calls.append(1))
    assert len(calls) == r.steps - 1 == 4


def test_beam_search_beats_greedy_on_total_log_prob(pair):
    """With no length penalty beam search maximises the total log-prob, and here it finds a higher one."""
    ours = pair[1]
    greedy = generate(ours, PROMPT, NEW, temperature=0.0, stop_at_eot=False)
    logp = full_logprobs(ours, PROMPT + greedy)
    greedy_total = sum(float(logp[len(PROMPT) - 1 + i, t]) for i, t in enumerate(greedy))
    beam = beam_search(ours, PROMPT, 3, NEW, 0.0, False).best
    assert beam.cum_logprob > greedy_total + 0.1


@pytest.mark.parametrize("bad, match", [
    (dict(beam_width=0), "beam_width"), (dict(beam_width=2.0), "beam_width"), (dict(beam_width=30000), "half"),
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(max_new_tokens=True), "max_new_tokens"),
    (dict(length_penalty=float("nan")), "length_penalty"), (dict(early_stopping="never"), "early_stopping"),
    (dict(eos_token_id=50257), "eos_token_id"), (dict(max_new_tokens=60), "context"),
])
def test_bad_arguments(pair, bad, match):
    with pytest.raises(ValueError, match=match):
        beam_search(pair[1], PROMPT, **{"beam_width": 2, "max_new_tokens": 4, **bad})
    with pytest.raises(ValueError, match="prompt"):
        beam_search(pair[1], [], 2, 4)
