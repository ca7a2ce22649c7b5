"""Sparse autoencoders, by their short name: ``from gpt2core import sae`` gives gpt2core.features.sae's API
(and ``train_sae``, ``train_on_activations`` from gpt2core.features.sae_train); ``python -m gpt2core.sae ...``
runs the training CLI (gpt2core.features.sae_train: ``--help`` lists its options)."""
from .features.sae import *  # noqa: F401,F403  (the SAE API, re-exported)
from .features.sae import __all__ as _sae_all
from .features.sae_train import SAETrainSettings, train_on_activations, train_sae

__all__ = [*_sae_all, "SAETrainSettings", "train_sae", "train_on_activations"]

if __name__ == "__main__":
    from .features.sae_train import main

    raise SystemExit(main())
