"""Convert a checkpoint you trained into a folder other tools open.

    python -m gpt2core.convert model.pth OUT/ [--to hf|ours] [--config cfg.json | --n-head N] [--vocab meta.pkl]

``--to hf`` (the default) writes a Hugging Face GPT-2 folder (config.json + model.safetensors) that
``transformers.GPT2LMHeadModel.from_pretrained`` loads, and so TransformerLens; ``--to ours`` writes this
project's format. A character vocabulary is kept in config.json (``gpt2core_tokenizer``) so this app reads
it back; transformers ignores the key.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from .reference.model import GPT2
from .reference.weights import CONFIG_FILE, CONV1D_SUFFIXES, TOKENIZER_KEY, WEIGHTS_FILE, WeightsError, load, save


def hf_config(model: GPT2) -> dict:
    cfg = model.config
    doc = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg.vocab_size,
           "n_positions": cfg.n_ctx, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
           "n_inner": None, "activation_function": "gelu_new" if cfg.activation == "gelu_tanh" else "gelu",
           "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
           "layer_norm_epsilon": cfg.layer_norm_eps, "tie_word_embeddings": cfg.tie_weights,
           "bos_token_id": 50256, "eos_token_id": 50256}
    if model.tokenizer is not None:
        doc[TOKENIZER_KEY] = model.tokenizer.to_dict()
        doc.pop("bos_token_id"), doc.pop("eos_token_id")     # a character vocabulary has no end-of-text
    return doc


def save_hf(model: GPT2, folder) -> Path:
    """A Hugging Face GPT-2 folder: ``transformer.h.{i}...`` names, Conv1D weights stored (in, out), and a
    zero q/k/v bias where the model has none (HF's GPT-2 always adds it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            if not model.config.tie_weights:
                state[name] = t.detach().contiguous()
            continue
        hf = "transformer." + ("h." + name[len("blocks."):] if name.startswith("blocks.") else name)
        state[hf] = (t.t() if name.endswith(CONV1D_SUFFIXES) else t).detach().contiguous()
    if not model.config.qkv_bias:
        for i in range(model.config.n_layer):
            state[f"transformer.h.{i}.attn.c_attn.bias"] = torch.zeros(3 * model.config.n_embd)
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(json.dumps(hf_config(model), indent=2) + "\n", encoding="utf-8")
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpt2core.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="model.pth / ckpt.pt / a folder this project loads")
    parser.add_argument("out", help="the folder to write")
    parser.add_argument("--to", choices=("hf", "ours"), default="hf")
    parser.add_argument("--config", help="a JSON config (e.g. GPT_CONFIG_124M) when the file has none")
    parser.add_argument("--n-head", type=int, help="the number of attention heads, when the file can't tell")
    parser.add_argument("--vocab", help="a character model's vocabulary: nanoGPT's meta.pkl or the training text")
    args = parser.parse_args(argv)
    try:
        model = load(args.checkpoint, config=args.config, n_head=args.n_head, vocab=args.vocab)
        folder = save_hf(model, args.out) if args.to == "hf" else save(model, args.out)
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {folder} ({'Hugging Face GPT-2' if args.to == 'hf' else 'gpt2core'} format, "
          f"{model.num_params():,} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
