"""GPT-2's byte-level BPE: the offline tokenizer (tiktoken on sha256-checked files) and the same merges redone
step by step in Python, to show how a word becomes tokens."""
