"""gpt2core.reference.config and gpt2core.reference.model: parameter counts, building blocks, configs, variants.

Every expected value comes from an independent source: the published GPT-2 sizes, a parameter
formula written from the architecture, torch.nn.functional, or a naive reference forward pass.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from gpt2core import GPT2, GPT2Config, PRESETS, get_config
from gpt2core.reference.model import LayerNorm, gelu

# Published sizes of OpenAI's GPT-2 checkpoints (tied head, biases on q/k/v).
PUBLISHED = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}




def formula_params(cfg: GPT2Config) -> int:
    """Parameter count written out from the architecture, independent of the model code."""
    V, d, L, n_ctx = cfg.vocab_size, cfg.n_embd, cfg.n_layer, cfg.n_ctx
    attn = d * 3 * d + (3 * d if cfg.qkv_bias else 0) + d * d + d      # c_attn + c_proj
    mlp = d * 4 * d + 4 * d + 4 * d * d + d                             # c_fc + c_proj
    lns = 2 * (2 * d)                                                    # ln_1 + ln_2
    head = 0 if cfg.tie_weights else V * d
    return V * d + n_ctx * d + L * (attn + mlp + lns) + 2 * d + head


def meta_model(cfg: GPT2Config) -> GPT2:
    with torch.device("meta"):
        return GPT2(cfg)


@pytest.fixture(scope="module")
def gpt2_small():
    torch.manual_seed(0)
    return GPT2(get_config("gpt2"))


# ---- parameter counts ------------------------------------------------------------------------

def test_gpt2_preset_has_published_size(gpt2_small):
    assert gpt2_small.num_params() == 124_439_808
    assert gpt2_small.lm_head.weight is gpt2_small.wte.weight   # tied: counted once
    # num_params counts unique tensors: the same as summing a deduplicated parameter list.
    unique = {id(p): p.numel() for _, p in gpt2_small.named_parameters(remove_duplicate=False)}
    assert sum(unique.values()) == 124_439_808


def test_gpt2_param_counts_sum_and_components(gpt2_small):
    counts = gpt2_small.param_counts()
    assert sum(counts.values()) == gpt2_small.num_params()
    d, V = 768, 50257
    assert counts["token embedding (wte)"] == V * d
    assert counts["position embedding (wpe)"] == 1024 * d
    for i in range(12):
        assert counts[f"layer {i} attention"] == 4 * d * d + 4 * d
        assert counts[f"layer {i} feed-forward"] == 8 * d * d + 5 * d
        assert counts[f"layer {i} LayerNorms"] == 4 * d
    assert counts["final LayerNorm"] == 2 * d
    assert counts["output head (tied to wte)"] == 0


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_preset_sizes(name):
    cfg = PRESETS[name]
    assert formula_params(cfg) == PUBLISHED[name]
    model = meta_model(cfg)   # no memory, no init cost
    assert model.num_params() == PUBLISHED[name]
    assert sum(model.param_counts().values()) == PUBLISHED[name]


def test_preset_shapes_are_the_published_ones():
    expected = {"gpt2": (768, 12, 12), "gpt2-medium": (1024, 16, 24),
                "gpt2-large": (1280, 20, 36), "gpt2-xl": (1600, 25, 48)}
    for name, (d, nh, L) in expected.items():
        cfg = PRESETS[name]
        assert (cfg.n_embd, cfg.n_head, cfg.n_layer, cfg.n_ctx, cfg.vocab_size) == (d, nh, L, 1024, 50257)
        assert cfg.head_dim == 64


@pytest.mark.parametrize("name", ["gpt2", "gpt2-medium", "gpt2-nobias", "tiny"])
def test_untied_adds_vocab_times_d(name):
    tied_cfg = PRESETS[name]
    untied_cfg = tied_cfg.replace(tie_weights=False)
    tied, untied = meta_model(tied_cfg), meta_model(untied_cfg)
    V, d = tied_cfg.vocab_size, tied_cfg.n_embd
    assert untied.num_params() - tied.num_params() == V * d
    assert untied.num_params() == formula_params(untied_cfg)
    counts = untied.param_counts()
    assert counts["output head"] == V * d and sum(counts.values()) == untied.num_params()
    assert untied.lm_head.weight is not untied.wte.weight


def test_untied_head_is_a_separate_tensor():
    torch.manual_seed(0)
    model = GPT2(get_config("tiny", tie_weights=False))
    assert "lm_head.weight" in dict(model.named_parameters())
    with torch.no_grad():
        model.lm_head.weight.zero_()
    assert model.wte.weight.abs().sum() > 0
    assert torch.count_nonzero(model(torch.tensor([[1, 2, 3]]))) == 0


# ---- building blocks -------------------------------------------------------------------------

@pytest.mark.parametrize("eps", [1e-5, 1e-3])
def test_layernorm_matches_functional(eps):
    g = torch.Generator().manual_seed(0)
    d = 48
    ln = LayerNorm(d, eps)
    with torch.no_grad():
        ln.weight.copy_(torch.randn(d, generator=g))
        ln.bias.copy_(torch.randn(d, generator=g))
    for x in (torch.randn(3, 7, d, generator=g),
              torch.randn(2, 5, d, generator=g) * 30 + 100,   # large mean and spread
              torch.randn(1, 4, d, generator=g) * 1e-3):        # variance comparable to eps
        expected = F.layer_norm(x, (d,), ln.weight, ln.bias, eps)
        torch.testing.assert_close(ln(x), expected, atol=2e-5, rtol=1e-5)


def test_layernorm_float64_is_exact_to_double_precision():
    g = torch.Generator().manual_seed(1)
    d = 32
    ln = LayerNorm(d).double()
    with torch.no_grad():
        ln.weight.copy_(torch.randn(d, generator=g, dtype=torch.float64))
        ln.bias.copy_(torch.randn(d, generator=g, dtype=torch.float64))
    x = torch.randn(4, 6, d, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ln(x), F.layer_norm(x, (d,), ln.weight, ln.bias, 1e-5), atol=1e-12, rtol=1e-12)


def test_gelu_matches_functional_tanh():
    x = torch.cat([torch.linspace(-12, 12, 20001), torch.tensor([-60.0, -30.0, 0.0, 30.0, 60.0])])
    torch.testing.assert_close(gelu(x), F.gelu(x, approximate="tanh"), atol=1e-6, rtol=1e-6)
    x64 = x.double()
    torch.testing.assert_close(gelu(x64), F.gelu(x64, approximate="tanh"), atol=1e-12, rtol=1e-12)
    # and it is the tanh approximation, not the exact erf GELU
    assert (gelu(torch.tensor(1.0)) - F.gelu(torch.tensor(1.0))).abs() > 1e-5


def test_gelu_written_out():
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0], dtype=torch.float64)
    expected = torch.tensor([0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))
                             for v in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(gelu(x), expected, atol=1e-14, rtol=0)


# ---- configs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("changes", [
    {"n_embd": 100, "n_head": 12},     # not divisible
    {"n_embd": 0}, {"n_head": 0}, {"n_layer": 0}, {"n_ctx": 0}, {"vocab_size": 0},
    {"n_layer": -1}, {"n_embd": 64.0}, {"n_layer": 2.5}, {"n_head": True}, {"n_ctx": "1024"},
    {"vocab_size": None},
    {"dropout": 1.0}, {"dropout": -0.1}, {"dropout": float("nan")}, {"dropout": 1.5},
])
def test_invalid_config_raises_value_error(changes):
    with pytest.raises(ValueError):
        GPT2Config(**changes)
    with pytest.raises(ValueError):
        get_config("tiny", **changes)


@pytest.mark.parametrize("eps", [-1e-5, float("nan"), float("inf")])
def test_invalid_layer_norm_eps_raises(eps):
    with pytest.raises(ValueError):
        GPT2Config(layer_norm_eps=eps)


def test_non_numeric_dropout_raises_value_error():
    with pytest.raises(ValueError):
        GPT2Config(dropout="0.1")


def test_config_helpers_raise_value_error():
    with pytest.raises(ValueError, match="unknown preset"):
        get_config("gpt5")
    with pytest.raises(ValueError, match="unknown config keys"):
        GPT2Config.from_dict({**GPT2Config().to_dict(), "n_inner": 3072})
    cfg = get_config("tiny")
    assert GPT2Config.from_dict(cfg.to_dict()) == cfg
    assert cfg.head_dim == cfg.n_embd // cfg.n_head == 16


def test_context_overflow_raises_value_error():
    torch.manual_seed(0)
    model = GPT2(get_config("tiny"))
    model(torch.zeros(1, 128, dtype=torch.long))   # exactly n_ctx is fine
    with pytest.raises(ValueError, match="exceeds the context"):
        model(torch.zeros(1, 129, dtype=torch.long))


# ---- variants --------------------------------------------------------------------------------

def test_qkv_bias_false_has_no_c_attn_bias():
    torch.manual_seed(0)
    model = GPT2(get_config("tiny", qkv_bias=False))
    names = set(model.state_dict())
    for i in range(2):
        assert model.blocks[i].attn.c_attn.bias is None
        assert f"blocks.{i}.attn.c_attn.bias" not in names
        assert f"blocks.{i}.attn.c_attn.weight" in names
        assert f"blocks.{i}.attn.c_proj.bias" in names   # only q/k/v lose their bias
    with_bias = GPT2(get_config("tiny"))
    assert with_bias.num_params() - model.num_params() == 2 * 3 * 64
    assert meta_model(PRESETS["gpt2-nobias"]).num_params() == 124_439_808 - 12 * 3 * 768


def reference_forward(model: GPT2, idx: torch.Tensor) -> torch.Tensor:
    """A naive GPT-2 forward from the parameters, with torch.nn.functional building blocks."""
    cfg = model.config
    sd = dict(model.named_parameters(remove_duplicate=False))
    B, T = idx.shape
    d, nh = cfg.n_embd, cfg.n_head
    x = sd["wte.weight"][idx] + sd["wpe.weight"][:T]
    for i in range(cfg.n_layer):
        p = lambda n: sd.get(f"blocks.{i}.{n}")  # noqa: E731
        h = F.layer_norm(x, (d,), p("ln_1.weight"), p("ln_1.bias"), cfg.layer_norm_eps)
        qkv = F.linear(h, p("attn.c_attn.weight"), p("attn.c_attn.bias"))
        q, k, v = (t.reshape(B, T, nh, d // nh).transpose(1, 2) for t in qkv.split(d, -1))
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + F.linear(z.transpose(1, 2).reshape(B, T, d), p("attn.c_proj.weight"), p("attn.c_proj.bias"))
        h = F.layer_norm(x, (d,), p("ln_2.weight"), p("ln_2.bias"), cfg.layer_norm_eps)
        h = F.gelu(F.linear(h, p("mlp.c_fc.weight"), p("mlp.c_fc.bias")), approximate="tanh")
        x = x + F.linear(h, p("mlp.c_proj.weight"), p("mlp.c_proj.bias"))
    x = F.layer_norm(x, (d,), sd["ln_f.weight"], sd["ln_f.bias"], cfg.layer_norm_eps)
    return F.linear(x, sd["lm_head.weight"])


@pytest.mark.parametrize("overrides", [{}, {"qkv_bias": False}, {"tie_weights": False},
                                       {"layer_norm_eps": 1e-3, "n_head": 8}])
def test_forward_matches_naive_reference(overrides):
    torch.manual_seed(0)
    model = GPT2(get_config("tiny", **overrides)).eval()
    with torch.no_grad():   # perturb LayerNorms and biases away from (1, 0) so they matter
        for name, p in model.named_parameters():
            if "ln_" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.5)
        idx = torch.randint(0, 50257, (2, 17), generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(model(idx), reference_forward(model, idx), atol=1e-5, rtol=1e-5)


def test_batch_rows_are_independent():
    torch.manual_seed(0)
    model = GPT2(get_config("tiny")).eval()
    idx = torch.randint(0, 50257, (3, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        batch = model(idx)
        for b in range(3):
            torch.testing.assert_close(batch[b], model(idx[b:b + 1])[0], atol=1e-5, rtol=1e-5)


def test_loss_is_mean_next_token_cross_entropy():
    torch.manual_seed(0)
    model = GPT2(get_config("tiny")).eval()
    g = torch.Generator().manual_seed(5)
    idx, targets = torch.randint(0, 50257, (2, 8), generator=g), torch.randint(0, 50257, (2, 8), generator=g)
    with torch.no_grad():
        logp = torch.log_softmax(model(idx).double(), -1)
        expected = -logp.gather(-1, targets[..., None]).mean()
        torch.testing.assert_close(model.loss(idx, targets).double(), expected, atol=1e-5, rtol=1e-5)


def test_init_scales_residual_projections():
    torch.manual_seed(0)
    model = GPT2(get_config("gpt2-nobias", n_layer=8, n_embd=256, n_head=4, vocab_size=1000, n_ctx=64))
    # GPT-2 init: std 0.02, residual projections 0.02 / sqrt(2 * n_layer)
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    scaled = 0.02 / math.sqrt(2 * 8)
    assert model.blocks[0].mlp.c_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert model.blocks[3].attn.c_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert torch.all(model.blocks[0].mlp.c_fc.bias == 0)
    assert torch.all(model.ln_f.weight == 1) and torch.all(model.ln_f.bias == 0)


def test_last_only_logits_are_the_last_row():
    """Decoding asks for the last position's logits alone; they equal the last row of the full logits."""
    torch.manual_seed(0)
    model = GPT2(get_config("tiny")).eval()
    idx = torch.randint(0, model.config.vocab_size, (2, 17))
    with torch.no_grad():
        full = model(idx)
        last = model(idx, last_only=True)
    assert last.shape == (2, 1, model.config.vocab_size)
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=0, atol=1e-5)
