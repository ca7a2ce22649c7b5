"""Making and changing weights: the sliding-window data, pre-training (python -m gpt2core.training.train),
instruction and classification fine-tuning with their generated data sets, and the model card of a run."""
