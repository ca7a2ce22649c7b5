"""Upstream GPT implementations, re-written compactly, to test our loader against checkpoints saved the
way their users save them. Module and attribute names are upstream's, so ``state_dict()`` keys, buffers
and the math (GELU variant, LayerNorm, attention) are theirs; only printing, generation, optimizer
grouping and pretrained loading are left out. Test support only: nothing here is a test.

- ``LFSGPTModel`` and its parts: rasbt/LLMs-from-scratch, ch04/01_main-chapter-code/gpt.py (the same
  code as ch05/01_main-chapter-code/previous_chapters.py and pkg/llms_from_scratch/ch03.py, ch04.py);
  saved as in ch05/01_main-chapter-code/gpt_train.py (``torch.save(model.state_dict(), "model.pth")``)
  and ch05.ipynb (``{"model_state_dict", "optimizer_state_dict"}``).
- ``NanoGPT`` / ``NanoGPTConfig``: karpathy/nanoGPT, model.py (``GPT``, ``GPTConfig``); the checkpoint
  as train.py writes ``ckpt.pt``; the vocabulary as data/shakespeare_char/prepare.py writes ``meta.pkl``.
- ``MinGPT``: karpathy/minGPT, mingpt/model.py (``GPT``); saved as projects/chargpt/chargpt.py does.
"""
import math
import pickle
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn as nn
from torch.nn import functional as F

# ---------------------------------------------------------------- rasbt/LLMs-from-scratch (ch03/ch04)

class MultiHeadAttention(nn.Module):
    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        assert d_out % num_heads == 0, "d_out must be divisible by num_heads"
        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        # A persistent buffer upstream, so "mask" is in every saved state_dict.
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))

    def forward(self, x):
        b, num_tokens, d_in = x.shape
        keys = self.W_key(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        queries = self.W_query(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        values = self.W_value(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        attn_scores = queries @ keys.transpose(2, 3)
        attn_scores.masked_fill_(self.mask.bool()[:num_tokens, :num_tokens], -torch.inf)
        attn_weights = self.dropout(torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1))
        context_vec = (attn_weights @ values).transpose(1, 2)
        return self.out_proj(context_vec.contiguous().view(b, num_tokens, self.d_out))

class LayerNorm(nn.Module):
    def __init__(self, emb_dim):
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        norm_x = (x - mean) / torch.sqrt(var + self.eps)
        return self.scale * norm_x + self.shift

class GELU(nn.Module):
    def forward(self, x):  # the tanh approximation
        return 0.5 * x * (1 + torch.tanh(
            torch.sqrt(torch.tensor(2.0 / torch.pi)) * (x + 0.044715 * torch.pow(x, 3))))

class FeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(cfg["emb_dim"], 4 * cfg["emb_dim"]), GELU(),
                                    nn.Linear(4 * cfg["emb_dim"], cfg["emb_dim"]))

    def forward(self, x):
        return self.layers(x)

class TransformerBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.att = MultiHeadAttention(d_in=cfg["emb_dim"], d_out=cfg["emb_dim"],
                                      context_length=cfg["context_length"], num_heads=cfg["n_heads"],
                                      dropout=cfg["drop_rate"], qkv_bias=cfg["qkv_bias"])
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x):
        x = x + self.drop_shortcut(self.att(self.norm1(x)))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))

class LFSGPTModel(nn.Module):
    """LLMs-from-scratch ``GPTModel``: forward(in_idx) -> logits (B, T, V); default PyTorch init."""
    def __init__(self, cfg):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, in_idx):
        x = self.tok_emb(in_idx) + self.pos_emb(torch.arange(in_idx.shape[1], device=in_idx.device))
        return self.out_head(self.final_norm(self.trf_blocks(self.drop_emb(x))))

# ------------------------------------------- karpathy/nanoGPT model.py and karpathy/minGPT mingpt/model.py
# The two share their layout and much code (same author); the shared lines are written once here.

def _heads(qkv, n_embd, n_head):
    """c_attn's output -> q, k, v as (B, nh, T, hs), as both upstreams split it."""
    B, T, _ = qkv.size()
    return [t.view(B, T, n_head, n_embd // n_head).transpose(1, 2) for t in qkv.split(n_embd, dim=2)]

def _transformer(vocab_size, block_size, n_embd, pdrop, blocks, ln_f):
    return nn.ModuleDict(dict(wte=nn.Embedding(vocab_size, n_embd), wpe=nn.Embedding(block_size, n_embd),
                              drop=nn.Dropout(pdrop), h=nn.ModuleList(blocks), ln_f=ln_f))

def _init_weights(module):
    # minGPT also sets its nn.LayerNorms to ones/zeros: PyTorch's own init, so nothing to do here.
    if isinstance(module, (nn.Linear, nn.Embedding)):
        torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            torch.nn.init.zeros_(module.bias)

def _init_gpt(model, n_layer):
    model.apply(_init_weights)
    for pn, p in model.named_parameters():  # the special scaled init of the residual projections, per GPT-2
        if pn.endswith('c_proj.weight'):
            torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

def _trunk(model, idx):
    t = idx.size(1)
    assert t <= model.block_size, f"Cannot forward sequence of length {t}, block size is only {model.block_size}"
    tr = model.transformer
    x = tr.drop(tr.wte(idx) + tr.wpe(torch.arange(0, t, dtype=torch.long, device=idx.device)))
    for block in tr.h:
        x = block(x)
    return tr.ln_f(x)

class NanoLayerNorm(nn.Module):
    """nanoGPT's ``LayerNorm``: weight, and a bias only when ``bias`` (False: no ``.bias`` key at all)."""
    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)

class NanoCausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        # Upstream's flash path (PyTorch >= 2.0) registers no "bias" mask buffer, so none is saved.

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = _heads(self.c_attn(x), self.n_embd, self.n_head)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0,
                                           is_causal=True)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))

class NanoMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()  # the exact (erf) GELU, unlike GPT-2's and minGPT's tanh
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))

class NanoBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = NanoLayerNorm(config.n_embd, bias=config.bias)
        self.attn = NanoCausalSelfAttention(config)
        self.ln_2 = NanoLayerNorm(config.n_embd, bias=config.bias)
        self.mlp = NanoMLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

@dataclass
class NanoGPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True

class NanoGPT(nn.Module):
    """nanoGPT ``GPT``: wte tied to lm_head; forward(idx, targets=None) -> (logits, loss), logits of the last
    position only when targets is None, as upstream; ``all_logits(idx)`` gives every position."""
    def __init__(self, config):
        super().__init__()
        self.config, self.block_size = config, config.block_size
        self.transformer = _transformer(config.vocab_size, config.block_size, config.n_embd, config.dropout,
                                        [NanoBlock(config) for _ in range(config.n_layer)],
                                        NanoLayerNorm(config.n_embd, bias=config.bias))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied: both names are in the state_dict
        _init_gpt(self, config.n_layer)

    def forward(self, idx, targets=None):
        x = _trunk(self, idx)
        if targets is not None:
            logits = self.lm_head(x)
            return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return self.lm_head(x[:, [-1], :]), None

    def all_logits(self, idx):
        return self.lm_head(_trunk(self, idx))

class NewGELU(nn.Module):
    def forward(self, x):  # the tanh approximation, as GPT-2
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))

class MinCausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)
        # Persistent, so "attn.bias" (1, 1, block_size, block_size) is in every saved state_dict.
        self.register_buffer("bias", torch.tril(torch.ones(config.block_size, config.block_size))
                             .view(1, 1, config.block_size, config.block_size))
        self.n_head, self.n_embd = config.n_head, config.n_embd

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = _heads(self.c_attn(x), self.n_embd, self.n_head)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = self.attn_dropout(F.softmax(att.masked_fill(self.bias[:, :, :T, :T] == 0, float('-inf')), dim=-1))
        return self.resid_dropout(self.c_proj((att @ v).transpose(1, 2).contiguous().view(B, T, C)))

class MinBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = MinCausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(config.n_embd, 4 * config.n_embd),
                                      c_proj=nn.Linear(4 * config.n_embd, config.n_embd),
                                      act=NewGELU(), dropout=nn.Dropout(config.resid_pdrop)))

    def forward(self, x):
        m = self.mlp
        x = x + self.attn(self.ln_1(x))
        return x + m.dropout(m.c_proj(m.act(m.c_fc(self.ln_2(x)))))

class MinGPT(nn.Module):
    """minGPT ``GPT`` from its CfgNode's fields; lm_head untied; forward(idx, targets=None) -> (logits, loss)."""
    def __init__(self, n_layer, n_head, n_embd, vocab_size, block_size, embd_pdrop=0.0, resid_pdrop=0.0,
                 attn_pdrop=0.0):
        super().__init__()
        config = SimpleNamespace(n_head=n_head, n_embd=n_embd, block_size=block_size, resid_pdrop=resid_pdrop,
                                 attn_pdrop=attn_pdrop)
        self.block_size = block_size
        self.transformer = _transformer(vocab_size, block_size, n_embd, embd_pdrop,
                                        [MinBlock(config) for _ in range(n_layer)], nn.LayerNorm(n_embd))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        _init_gpt(self, n_layer)

    def forward(self, idx, targets=None):
        logits = self.lm_head(_trunk(self, idx))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

# ---------------------------------------------------------------- tiny sizes, training, saving

LFS_TINY = {"vocab_size": 97, "context_length": 32, "emb_dim": 48, "n_heads": 4, "n_layers": 2,
            "drop_rate": 0.0, "qkv_bias": False}
# train.py's model_args (its key order); bias=False is train.py's default and so shakespeare_char's.
NANOGPT_TINY_ARGS = dict(n_layer=2, n_head=4, n_embd=48, block_size=32, bias=False, vocab_size=65, dropout=0.0)
MINGPT_TINY = dict(n_layer=2, n_head=4, n_embd=48, vocab_size=97, block_size=32)
# data/shakespeare_char/prepare.py: sorted(set(text)) of tiny shakespeare, 65 characters.
SHAKESPEARE_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

def full_logits(model, idx):
    """Logits (B, T, V) at every position, whichever of the three models."""
    if isinstance(model, NanoGPT):
        return model.all_logits(idx)
    out = model(idx)
    return out[0] if isinstance(out, tuple) else out

def train_a_few_steps(model, vocab_size, context, steps=3, seed=0, forward=full_logits, lr=1e-3):
    """AdamW on random (2, context) token batches, next-token loss, so weights leave their init and an
    optimizer state exists. Leaves the model in eval mode; returns the optimizer."""
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, vocab_size, (2, context + 1), generator=g)
        logits = forward(model, batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return optimizer

def save_lfs_state_dict(model, path):
    """gpt_train.py's ``torch.save(model.state_dict(), "model.pth")``; chargpt.py saves minGPT the same way."""
    torch.save(model.state_dict(), path)

save_mingpt = save_lfs_state_dict

def save_lfs_with_optimizer(model, optimizer, path):
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()}, path)

def save_nanogpt_ckpt(model, optimizer, model_args, path, compiled_prefix=False, iter_num=250, best_val_loss=1.5):
    """ckpt.pt as train.py writes it. ``config`` is train.py's globals of type int/float/bool/str
    (defaults with config/train_shakespeare_char.py's overrides and model_args); best_val_loss is a 0-d
    tensor there (estimate_loss's losses.mean()). compiled_prefix: the names torch.compile's module gives."""
    state = model.state_dict()
    if compiled_prefix:
        state = {"_orig_mod." + k: v for k, v in state.items()}
    config = dict(out_dir='out-shakespeare-char', eval_interval=250, log_interval=10, eval_iters=200, eval_only=False,
                  always_save_checkpoint=False, init_from='scratch', wandb_log=False, wandb_project='shakespeare-char',
                  wandb_run_name='mini-gpt', dataset='shakespeare_char', gradient_accumulation_steps=1, batch_size=64,
                  block_size=model_args['block_size'], n_layer=model_args['n_layer'], n_head=model_args['n_head'],
                  n_embd=model_args['n_embd'], dropout=model_args['dropout'], bias=model_args['bias'],
                  learning_rate=1e-3, max_iters=5000, weight_decay=1e-1, beta1=0.9, beta2=0.99, grad_clip=1.0,
                  decay_lr=True, warmup_iters=100, lr_decay_iters=5000, min_lr=1e-4, backend='nccl', device='cpu',
                  dtype='float32', compile=compiled_prefix)
    torch.save({'model': state, 'optimizer': optimizer.state_dict(), 'model_args': dict(model_args),
                'iter_num': iter_num, 'best_val_loss': torch.tensor(best_val_loss), 'config': config}, path)

def save_nanogpt_meta(path, chars=SHAKESPEARE_CHARS):
    """meta.pkl as data/shakespeare_char/prepare.py writes it, for the characters in the order given."""
    chars = list(chars)
    meta = {'vocab_size': len(chars), 'itos': {i: ch for i, ch in enumerate(chars)},
            'stoi': {ch: i for i, ch in enumerate(chars)}}
    with open(path, 'wb') as f:
        pickle.dump(meta, f)

@torch.no_grad()
def greedy(logits_fn, ids, n, context=None):
    """n greedy next tokens (a list of ints) after ids (a list of ints), from logits_fn: (1, T) -> (1, T, V);
    the input is cropped to the last ``context`` tokens when given."""
    ids, new = list(ids), []
    for _ in range(n):
        window = ids[-context:] if context else ids
        nxt = int(logits_fn(torch.tensor([window]))[0, -1].argmax())
        ids.append(nxt)
        new.append(nxt)
    return new
