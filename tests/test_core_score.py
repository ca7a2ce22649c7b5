"""gpt2core.analysis.score: per-token log-probabilities against HF transformers' log_softmax, ranks, windows."""
import math

import pytest
import torch

from gpt2core import load_hf
from gpt2core.analysis.score import score_tokens, windows

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def pair(hf_tiny_dir):
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_tiny_dir).eval()
    return hf, load_hf(hf_tiny_dir)


def hf_logprobs(hf, ids):
    """log p(ids[j] | ids[:j]) for j >= 1 from one HF forward over ``ids``."""
    with torch.no_grad():
        lp = torch.log_softmax(hf(torch.tensor([ids])).logits[0].double(), dim=-1)
    return lp[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0], lp[:-1]


def test_logprobs_equal_hf_log_softmax(pair):
    hf, ours = pair
    ids = torch.randint(0, 50257, (40,), generator=torch.Generator().manual_seed(3)).tolist()
    s = score_tokens(ours, ids)
    expected, full = hf_logprobs(hf, ids)
    assert s.n_windows == 1 and s.logprobs.shape == (39,)
    torch.testing.assert_close(torch.from_numpy(s.logprobs).double(), expected, atol=1e-5, rtol=1e-5)
    # ranks and top-5 from HF's distribution
    hf_rank = (full > expected[:, None]).sum(dim=1) + 1
    assert (s.ranks == hf_rank.numpy()).mean() > 0.97    # float rounding may swap near-ties
    torch.testing.assert_close(torch.from_numpy(s.top_logprobs).double(), full.topk(5, dim=-1).values,
                               atol=1e-5, rtol=1e-5)
    assert s.perplexity == pytest.approx(math.exp(-expected.mean().item()), rel=1e-5)
    torch.testing.assert_close(torch.from_numpy(s.surprisal_bits).double(), -expected / math.log(2),
                               atol=1e-5, rtol=1e-5)


def test_windowed_logprobs_equal_hf_on_each_window(pair):
    """100 tokens through a 64-token context: windows of 64 every 32, each HF window checked."""
    hf, ours = pair
    ids = torch.randint(0, 50257, (100,), generator=torch.Generator().manual_seed(4)).tolist()
    s = score_tokens(ours, ids)
    spans = windows(100, 64, 32)
    assert spans == [(0, 64, 1), (32, 96, 64), (64, 100, 96)]
    assert (s.window, s.stride, s.n_windows, s.min_context) == (64, 32, 3, 32)
    expected = []
    for start, end, first in spans:
        lp, _ = hf_logprobs(hf, ids[start:end])
        expected.append(lp[first - 1 - start:])
    expected = torch.cat(expected)
    assert expected.shape == (99,)
    torch.testing.assert_close(torch.from_numpy(s.logprobs).double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n, window, stride", [(2, 64, 32), (64, 64, 32), (65, 64, 32), (200, 16, 5),
                                               (50, 10, 9), (50, 10, 1)])
def test_windows_score_every_token_once(n, window, stride):
    spans = windows(n, window, stride)
    scored = [j for start, end, first in spans for j in range(first, end)]
    assert scored == list(range(1, n))
    for start, end, first in spans:
        assert end - start <= window
        assert first == 1 or first - start >= window - stride   # context before the first scored token


def test_ranks_count_tokens_above():
    torch.manual_seed(0)
    from gpt2core import GPT2, get_config
    model = GPT2(get_config("tiny", n_layer=1, n_embd=32, n_head=2, n_ctx=32)).eval()
    ids = [5, 9, 100, 7, 7, 7]
    s = score_tokens(model, ids, top_k=3)
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids]))[0], dim=-1)
    for j in range(1, len(ids)):
        row = lp[j - 1]
        assert s.ranks[j - 1] == int((row > row[ids[j]]).sum()) + 1
        assert s.top_ids[j - 1, 0] == int(row.argmax())
    assert s.top_ids.shape == (5, 3)


def test_bad_arguments():
    from gpt2core import GPT2, get_config
    model = GPT2(get_config("tiny", n_layer=1, n_embd=32, n_head=2, n_ctx=32)).eval()
    with pytest.raises(ValueError, match="at least two tokens"):
        score_tokens(model, [5])
    with pytest.raises(ValueError, match="stride"):
        score_tokens(model, [5, 6, 7], window=8, stride=8)


def test_start_token_scores_the_first_token_too(pair):
    """GLTR's reading: <|endoftext|> in front, every token of the text scored; equal to HF on [EOT] + ids."""
    from gpt2core import EOT_ID
    hf, ours = pair
    ids = torch.randint(0, 50257, (30,), generator=torch.Generator().manual_seed(5)).tolist()
    s = score_tokens(ours, ids, start_token=EOT_ID)
    assert s.first == 0 and s.ids == ids and s.logprobs.shape == (30,)
    expected, _ = hf_logprobs(hf, [EOT_ID] + ids)
    torch.testing.assert_close(torch.from_numpy(s.logprobs).double(), expected, atol=1e-5, rtol=1e-5)
    # 100 tokens + the start token through a 64-token context: windows over all 101
    long_ids = torch.randint(0, 50257, (100,), generator=torch.Generator().manual_seed(6)).tolist()
    s = score_tokens(ours, long_ids, start_token=EOT_ID)
    seq = [EOT_ID] + long_ids
    expected = torch.cat([hf_logprobs(hf, seq[a:b])[0][f - 1 - a:] for a, b, f in windows(101, 64, 32)])
    torch.testing.assert_close(torch.from_numpy(s.logprobs).double(), expected, atol=1e-5, rtol=1e-5)
