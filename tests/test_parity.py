"""gpt2core against Hugging Face transformers on the same (tiny, random, perturbed) weights."""
import pytest
import torch

from gpt2core import generate, load_hf

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def pair(hf_tiny_dir):
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_tiny_dir, attn_implementation="eager").eval()
    ours = load_hf(hf_tiny_dir)
    return hf, ours


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 50257, (2, 40), generator=torch.Generator().manual_seed(1))


def test_logits_match(pair, ids):
    hf, ours = pair
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_attention_weights_match(pair, ids):
    hf, ours = pair
    with torch.no_grad():
        out = hf(ids, output_attentions=True)
    _, cache = ours.run_with_cache(ids, names="*hook_pattern")
    assert len(out.attentions) == ours.config.n_layer
    for i, expected in enumerate(out.attentions):
        torch.testing.assert_close(cache[f"blocks.{i}.attn.hook_pattern"], expected, atol=1e-6, rtol=1e-5)


def test_hidden_states_match(pair, ids):
    hf, ours = pair
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True)
    _, cache = ours.run_with_cache(ids, names=["blocks.0.hook_resid_pre", "*hook_resid_post"])
    n = ours.config.n_layer
    # HF: the embeddings, the output of each block but the last, then the last after ln_f.
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], out.hidden_states[0], atol=1e-5, rtol=1e-5)
    for i in range(n - 1):
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_post"], out.hidden_states[i + 1],
                                   atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        final = ours.ln_f(cache[f"blocks.{n - 1}.hook_resid_post"])
    torch.testing.assert_close(final, out.hidden_states[n], atol=1e-5, rtol=1e-5)


def test_greedy_tokens_match(pair):
    hf, ours = pair
    prompt = [464, 2068, 7586, 21831, 18045, 625]
    with torch.no_grad():
        expected = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False,
                               eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    got = generate(ours, prompt, max_new_tokens=20, temperature=0.0, stop_at_eot=False)
    assert len(got) == 20
    assert got == expected
