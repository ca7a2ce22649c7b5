"""Reading the model through its hooks: the logit lens, attribution and ablation, circuits (the head detector,
activation patching), per-token scores, one token's trace through the forward pass, and precisions against fp32."""
