"""gpt2core.analysis.precision: one prompt in each precision against fp32, and the error report of the --dtype mode."""
import contextlib

import numpy as np
import pytest
import torch

from gpt2core import GPT2, get_config
from gpt2core.kernels import backend
from gpt2core.analysis import precision as P

IDS = [464, 3290, 286, 262, 1499, 318, 11, 290, 340, 373, 257, 922, 1110, 13]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT2(get_config("tiny", n_layer=2, n_embd=64, n_head=4, n_ctx=64)).eval()
    with torch.no_grad():   # LayerNorms away from (1, 0), so nothing is accidentally exact
        for name, p in m.named_parameters():
            if "ln_" in name:
                p.add_(torch.randn_like(p) * 0.3)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def direct(model, ids, precision):
    """The run compare() measures, done by hand: all logits and every layer's pattern, in ``precision``."""
    with backend.precision(precision):
        logits, cache = model.run_with_cache(ids)
    patterns = torch.stack([cache[f"blocks.{i}.attn.hook_pattern"] for i in range(model.config.n_layer)])
    assert logits.dtype == torch.float32 and patterns.dtype == torch.float32   # only the products change format
    return logits, patterns


def test_fp32_row_is_the_exact_reference(model):
    rows = P.compare(model, IDS)
    assert [r.precision for r in rows] == list(backend.PRECISIONS) and rows[0].precision == "fp32"
    ref = rows[0]
    assert ref.max_logit_delta == 0.0 and ref.max_attention_delta == 0.0 and ref.top1_agreement == 1.0
    assert ref.top1_same.all() and not ref.logit_delta_by_position.any() and ref.n_tokens == len(IDS)
    logits, _ = direct(model, IDS, "fp32")
    probs = torch.softmax(logits[-1].double(), -1)
    assert ref.top_ids.tolist() == torch.topk(probs, 5).indices.tolist()
    assert np.allclose(ref.top_probs, torch.topk(probs, 5).values.numpy(), rtol=0, atol=1e-12)
    # fp32 is listed first (the reference) even when asked for last, or not at all
    assert [r.precision for r in P.compare(model, IDS, ["int8", "fp32"])] == ["fp32", "int8"]
    assert [r.precision for r in P.compare(model, IDS, ["bf16"])] == ["fp32", "bf16"]


def test_deltas_are_the_direct_computation(model):
    rows = {r.precision: r for r in P.compare(model, IDS, top_k=3)}
    ref_logits, ref_patterns = direct(model, IDS, "fp32")
    for name in ("bf16", "fp16", "int8"):
        row = rows[name]
        logits, patterns = direct(model, IDS, name)
        dl, da = (logits - ref_logits).abs(), (patterns - ref_patterns).abs()
        assert row.max_logit_delta == pytest.approx(float(dl.max()), rel=1e-6, abs=1e-7), name
        assert row.logit_delta_by_position == pytest.approx(dl.amax(-1).double().numpy(), rel=1e-6, abs=1e-7)
        same = (logits.argmax(-1) == ref_logits.argmax(-1)).numpy()
        assert (row.top1_same == same).all() and row.top1_agreement == pytest.approx(same.mean())
        assert row.max_attention_delta == pytest.approx(float(da.max()), rel=1e-6, abs=1e-9), name
        layer, head, q, k = row.attention_where
        assert float(da[layer, head, q, k]) == pytest.approx(row.max_attention_delta, rel=1e-6, abs=1e-9)
        assert k <= q                       # a causal pattern changes only where it may look
        probs = torch.softmax(logits[-1].double(), -1)
        assert row.top_ids.tolist() == torch.topk(probs, 3).indices.tolist() and len(row.top_probs) == 3
        assert row.weight_bytes == backend.weight_bytes(model, name) and row.seconds > 0
        # rounding changes something, and never much on this small model
        assert 0 < row.max_logit_delta < 2.0 and 0 < row.max_attention_delta < 0.2, name
    # fp16 keeps 11 significant bits, bf16 8: fp16 is the closer of the two
    assert rows["fp16"].max_logit_delta < rows["bf16"].max_logit_delta
    assert rows["bf16"].weight_bytes == rows["fp32"].weight_bytes // 2


def test_int8_is_pytorchs_dynamic_quantisation(model):
    """The int8 run against the same model with every Linear replaced by quantize_dynamic of an nn.Linear
    holding its weight (run in fp32: the quantised modules are the only change)."""
    from gpt2core.reference.model import Linear

    row = {r.precision: r for r in P.compare(model, IDS)}["int8"]
    quantised = {}
    for name, m in model.named_modules():
        if isinstance(m, Linear):
            ref = torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            with torch.no_grad():
                ref.weight.copy_(m.weight)
                if m.bias is not None:
                    ref.bias.copy_(m.bias)
            quantised[name] = torch.ao.quantization.quantize_dynamic(
                torch.nn.Sequential(ref), {torch.nn.Linear}, dtype=torch.qint8)[0]
    modules = dict(model.named_modules())
    try:
        for name, q in quantised.items():
            modules[name].forward = q.forward            # this instance only
        with backend.precision("fp32"):
            logits, _ = model.run_with_cache(IDS)
    finally:
        for name in quantised:
            del modules[name].forward
    int8_logits, _ = direct(model, IDS, "int8")
    ref_logits, _ = direct(model, IDS, "fp32")
    assert (int8_logits.argmax(-1) == logits.argmax(-1)).all()          # top-1 at every position
    assert float((int8_logits - logits).abs().max()) < 1e-3 * max(1.0, float(logits.abs().max()))
    assert float((logits - ref_logits).abs().max()) == pytest.approx(row.max_logit_delta, rel=1e-3, abs=1e-5)
    assert row.max_logit_delta > 0                                       # and it is not fp32


def test_error_report_is_compares_figures(model):
    rows = {r.precision: r for r in P.compare(model, IDS)}
    for name in backend.PRECISIONS:
        rep = P.error_report(model, IDS, name)
        row = rows[name]
        assert rep.precision == name and rep.n_tokens == len(IDS)
        assert (rep.max_logit_delta, rep.top1_agreement, rep.max_attention_delta) == \
            pytest.approx((row.max_logit_delta, row.top1_agreement, row.max_attention_delta))
        assert rep.attention_where == row.attention_where


def test_the_reference_is_fp32_whatever_the_models_default(model):
    """--dtype bf16 sets model.precision: the report's reference must still be fp32 (the context wins)."""
    plain = P.error_report(model, IDS, "bf16")
    model.precision = "bf16"
    try:
        with_default = P.error_report(model, IDS, "bf16")
        logits_default, _ = model.run_with_cache(IDS)             # the model's own default: bf16
    finally:
        model.precision = "fp32"
    assert with_default.max_logit_delta == plain.max_logit_delta > 0
    bf16_logits, _ = direct(model, IDS, "bf16")
    assert torch.equal(logits_default, bf16_logits)


def test_error_report_detects_a_perturbed_run(model, monkeypatch):
    """When the "bf16" run is not the model (a weight of layer 1's attention scaled while it runs), the report
    must say so: large errors, and the largest attention change in layer 1 (layer 0 comes before it)."""
    honest = P.error_report(model, IDS, "bf16")
    real = backend.precision
    w = model.blocks[1].attn.c_attn.weight

    @contextlib.contextmanager
    def tampered(name):
        with real(name):
            if name != "bf16":
                yield
                return
            with torch.no_grad():
                w.mul_(4.0)
            try:
                yield
            finally:
                with torch.no_grad():
                    w.div_(4.0)

    monkeypatch.setattr(backend, "precision", tampered)
    bad = P.error_report(model, IDS, "bf16")
    monkeypatch.undo()
    assert bad.max_attention_delta > 10 * honest.max_attention_delta and bad.attention_where[0] == 1
    assert bad.max_logit_delta > 3 * honest.max_logit_delta
    again = P.error_report(model, IDS, "bf16")          # the weight is back: the honest figures again
    assert again.max_logit_delta == pytest.approx(honest.max_logit_delta)


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="fp8"):
        P.compare(model, IDS, ["fp32", "fp8"])
    with pytest.raises(ValueError, match="fp8"):
        P.error_report(model, IDS, "fp8")
    with pytest.raises(ValueError, match="non-empty"):
        P.compare(model, [])
    with pytest.raises(ValueError, match="one non-empty sequence"):
        P.error_report(model, [IDS, IDS], "bf16")
