"""From logits to text: temperature / top-k / top-p sampling, KV-cache generation and streaming, beam search."""
