"""The views and generation run on the model's device (--device cuda serves on CUDA).

There may be no GPU where these run, so three checks:
- a static one: in the view code (explorer/compute and gpt2core's view modules) every ``.numpy()`` reads
  through ``.cpu()`` (or explorer.compute.to_numpy), and every tensor made from scratch names its device, so a
  new site that makes a model input on the CPU, or reads a GPU result with ``.numpy()``, fails here on a laptop;
- every main endpoint on a model put on ``torch.device("cpu")`` explicitly;
- where CUDA is found (skipped otherwise): every main endpoint on CUDA against the same model on the CPU.
"""
from __future__ import annotations

import ast
import copy
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
VIEW_FILES = sorted(p for p in (ROOT / "explorer" / "compute").glob("*.py") if p.name != "training.py") + [
    ROOT / "gpt2core" / path for path in ("reference/devices.py", "decoding/generate.py", "analysis/lens.py",
                                          "decoding/sampling.py", "analysis/score.py", "analysis/trace.py")]
# torch functions that make a tensor from scratch: on the CPU unless told otherwise (the *_like ones follow
# their argument and are fine).
FACTORIES = {"tensor", "as_tensor", "empty", "zeros", "ones", "full", "arange", "randn", "rand", "randint",
             "eye", "linspace", "Generator"}
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"


# ---- static --------------------------------------------------------------------------------------------
def device_problems(source: str, filename: str = "<source>") -> list[str]:
    """Each ``.numpy()`` not right after ``.cpu()``, and each torch factory call without ``device=``."""
    problems = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        func = node.func
        if func.attr == "numpy":
            receiver = func.value
            after_cpu = (isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Attribute)
                         and receiver.func.attr == "cpu")
            if not after_cpu:
                problems.append(f"{filename}:{node.lineno}: .numpy() without .cpu() (use explorer.compute.to_numpy)")
        elif (func.attr in FACTORIES and isinstance(func.value, ast.Name) and func.value.id == "torch"
              and not any(k.arg == "device" for k in node.keywords)):
            problems.append(f"{filename}:{node.lineno}: torch.{func.attr}(...) without device= "
                            "(gpt2core.reference.devices.ids_on for a model's ids; device='cpu' when meant)")
    return problems


def test_the_static_check_finds_what_it_looks_for():
    bad = ("x = model(torch.tensor([ids]))\ny = logits.float().numpy()\ng = torch.Generator()\n"
           "z = torch.zeros(3)\n")
    assert len(device_problems(bad)) == 4
    good = ("x = model(torch.tensor([ids], device=device_of(model)))\ny = logits.float().cpu().numpy()\n"
            "g = torch.Generator(device='cpu')\nz = torch.zeros_like(x)\nw = to_numpy(x)\n")
    assert device_problems(good) == []


@pytest.mark.parametrize("path", VIEW_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_view_code_names_the_device(path):
    assert device_problems(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT))) == []


def test_run_with_cache_moves_the_ids_to_the_models_device():
    from gpt2core import GPT2, get_config
    model = GPT2(get_config("tiny", n_layer=1, n_head=2, n_embd=16, n_ctx=16)).to("meta").eval()
    seen = []
    logits, _ = model.run_with_cache([1, 2, 3], names=[], hooks={"hook_embed": lambda x, _n: seen.append(x.device)})
    assert logits.device.type == "meta" and seen == [torch.device("meta")]


# ---- every endpoint, on a device given explicitly ------------------------------------------------------
def endpoints(model) -> dict[str, object]:
    """Each view's compute (and generation) on ``model``: name -> its result as numbers (arrays and floats)."""
    from explorer.compute import attention, compare, embeddings, gelu, layernorm, sampling_view, score, walkthrough, why
    from explorer.compute.generation import generate_tokens
    from explorer.inputs import prepare_prompt
    from gpt2core.decoding.generate import generate, next_token_distribution

    prompt = prepare_prompt(TEXT)
    ids = prompt.ids
    last = len(ids) - 1
    out: dict[str, object] = {}
    lv = why.lens_view(model, ids, last, ids[1])
    out["why.lens"] = [lv.top_prob] + [a for pair in lv.series.values() for a in pair]
    av = why.attribution_view(model, ids, last, None, None)
    out["why.attribution"] = [av.heads, av.attn, av.attn_bias, av.mlp, av.embed, av.pos_embed, av.logit, av.total]
    out["why.ablation"] = [why.ablation_view(model, ids, last, None, [(0, 1)], [1], "mean").after]
    sv = why.scan_view(model, ids, last, None, "zero")
    out["why.scan"] = [sv.deltas, sv.clean]
    a, b = compare.run_pair(("A", "B"), (model, model), (prompt, prepare_prompt(TEXT.upper())), 1, 0)
    out["compare"] = [a.probs, a.pattern, b.probs, b.pattern]
    twin = compare.UntrainedTwin(model).get()
    assert next(twin.parameters()).device == next(model.parameters()).device
    nb = embeddings.nearest_tokens(model, ids[0])
    out["embeddings"] = [nb.similarities, embeddings.token_projection(model, ids).coords,
                         embeddings.position_view(model.wpe.weight).similarity,
                         embeddings.position_view(embeddings.untrained_wpe(16, 8)).norms]
    logits = sampling_view.next_token_logits(model, ids)
    sv = sampling_view.sampling_view(logits, 0.8, 20, 0.9)
    out["sampling"] = [logits, sv.final_probs, sampling_view.draw_counts(
        sampling_view.final_distribution(logits, 0.8, 20, 0.9), 200, seed=1)]
    gs = gelu.gelu_stats(model, ids)
    out["gelu"] = [gelu.gelu_curves().gelu_grad, gs.pre_counts, gs.neg_share, gs.zero_share]
    run = attention.attention_run(model, ids, scores_layer=1)
    out["attention"] = [run.patterns, np.nan_to_num(run.scores, nan=0.0)]
    ls = layernorm.layernorm_stats(model, ids)
    out["layernorm"] = [ls.in_mean, ls.in_std, ls.out_std, ls.resid_norm]
    tr = walkthrough.walkthrough_run(model, ids, last)
    for step in tr.steps:
        walkthrough.picture(step, prompt.tokens)        # a histogram's counts may move a bin: not compared
    out["walkthrough"] = [step.vector for step in tr.steps]
    walkthrough.write_log(tr)
    scored = score.score_view(model, prompt)
    out["score"] = [scored.scores.logprobs, scored.scores.top_logprobs]
    tokens = list(generate_tokens(model, ids, 8, temperature=1.0, top_k=0, top_p=1.0, seed=3))
    out["generate"] = [[t.id for t in tokens], [t.prob for t in tokens], [t.sampled_prob for t in tokens]]
    out["generate.greedy"] = [generate(model, ids, 8, temperature=0.0)]
    out["generate.distribution"] = [next_token_distribution(model, ids, 0.8, 20, 0.9).final]
    return out


@pytest.fixture(scope="module")
def model():
    from explorer.session import build_registry
    return build_registry().get(None).model      # the bundled checkpoint when present (trained: few ties)


def test_every_endpoint_runs_on_a_device_given_explicitly(model):
    cpu = copy.deepcopy(model).to(torch.device("cpu"))
    results = endpoints(cpu)
    assert set(results) >= {"why.lens", "compare", "embeddings", "sampling", "gelu", "attention", "layernorm",
                            "walkthrough", "score", "generate"}


# Counts and shares (histogram bins, draws, the share under a threshold), compared as totals.
COUNTS = {("gelu", 1), ("gelu", 2), ("gelu", 3), ("sampling", 2)}


def _numbers(x) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().cpu()
    return np.asarray(x, dtype=np.float64)


def check_parity(model, device: str) -> None:
    """The same model on ``device`` and on the CPU: every view's numbers agree to fp32 tolerance, and
    generation draws the same tokens for a seed (sampling is on a CPU generator either way)."""
    on_cpu = endpoints(copy.deepcopy(model).to("cpu"))
    on_device = endpoints(copy.deepcopy(model).to(device))
    assert set(on_cpu) == set(on_device)
    for name, parts in on_cpu.items():
        assert len(parts) == len(on_device[name]), name
        for i, (c, g) in enumerate(zip(parts, on_device[name])):
            c, g = _numbers(c), _numbers(g)
            assert c.shape == g.shape, f"{name}[{i}]"
            if (name, i) in COUNTS:     # counts and shares: a value at a bin edge or threshold may move over
                assert abs(c - g).sum() <= 0.01 * abs(c).sum() + 1e-9, f"{name}[{i}]"
                continue
            np.testing.assert_allclose(g, c, rtol=2e-4, atol=2e-5, err_msg=f"{name}[{i}]")


def test_the_parity_check_passes_cpu_against_cpu(model):
    check_parity(model, "cpu")      # the comparison the CUDA test makes, checked where it can run


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_every_endpoint_on_cuda_matches_the_cpu(model):
    check_parity(model, "cuda")
    from explorer.app import model_status
    from explorer.session import ModelEntry
    text, _ = model_status(ModelEntry("gpu", copy.deepcopy(model).to("cuda"), "test"))
    assert "on cuda (" in text                     # the status line names the device that serves
