"""Feature tools: reading a model by its learned features rather than its components (beside analysis/).

  neurons.py    MLP neurons: the top ones on a prompt, and a corpus index of what each one fires on
  steering.py   generation with c x a direction added to the residual stream (activation addition)
  sae.py        sparse autoencoders: the model, metrics, splicing with the error term, SAELens's format
  sae_train.py  training an SAE on a model's activations; the CLI behind ``python -m gpt2core.sae``
"""
