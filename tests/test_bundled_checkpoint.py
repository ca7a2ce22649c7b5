"""The bundled model: it loads, the app serves it by default, and its held-out loss is the card's."""
import json

import pytest
import torch

from explorer.session import BUNDLED_DIR, build_registry
from gpt2core import load
from gpt2core.modelcard import heldout_loss


@pytest.fixture(scope="module")
def card():
    return json.loads((BUNDLED_DIR / "config.json").read_text())


def test_bundled_checkpoint_is_small_and_loads(card):
    weights = BUNDLED_DIR / "model.safetensors"
    assert weights.stat().st_size <= 40 * 2**20
    model = load(BUNDLED_DIR)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config.to_dict() == card["config"]


def test_heldout_loss_matches_the_model_card(card):
    model = load(BUNDLED_DIR)
    loss, n_tokens = heldout_loss(model, BUNDLED_DIR)
    assert n_tokens == card["heldout"]["tokens"]
    assert loss == pytest.approx(card["heldout"]["loss"], abs=2e-3)
    # And it learned something: far below uniform guessing over 50,257 tokens (ln 50257 = 10.8).
    assert loss < 7.0
    assert f"{card['heldout']['loss']:.4f}" in (BUNDLED_DIR / "README.md").read_text()


def test_app_serves_the_bundled_model_by_default(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    registry = build_registry()
    entry = registry.get(registry.default)
    assert entry.trained and "checkpoints/shakespeare" in entry.source.replace("\\", "/")
