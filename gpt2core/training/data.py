"""The sliding-window dataset: input windows over token ids and targets shifted by one."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


class SlidingWindowDataset(Dataset):
    """Window i is ids[i*stride : i*stride + n] as input and the same shifted by one as target."""

    def __init__(self, ids, context_length: int, stride: int):
        if context_length < 1 or stride < 1:
            raise ValueError(f"context_length and stride must be >= 1, got {context_length}, {stride}")
        self.ids = torch.as_tensor(ids, dtype=torch.long)
        self.context_length, self.stride = context_length, stride

    def __len__(self) -> int:
        spare = len(self.ids) - self.context_length - 1   # room left after the first window
        return 0 if spare < 0 else spare // self.stride + 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        start = i * self.stride
        chunk = self.ids[start:start + self.context_length + 1]                  # (n + 1,)
        return chunk[:-1], chunk[1:]                                              # (n,), (n,)


def split_ids(ids, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Train on the first part, validate on the last: no window straddles the two."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(len(ids) * val_fraction)
    return ids[:len(ids) - n_val], ids[len(ids) - n_val:]


def make_loaders(ids, context_length: int, stride: int, batch_size: int, val_fraction: float = 0.1,
                 seed: int = 0) -> tuple[DataLoader, DataLoader]:
    train_ids, val_ids = split_ids(ids, val_fraction)
    train = SlidingWindowDataset(train_ids, context_length, stride)
    val = SlidingWindowDataset(val_ids, context_length, context_length)
    g = torch.Generator().manual_seed(seed)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True, generator=g),
            DataLoader(val, batch_size=batch_size, shuffle=False))


def random_starts(n_ids: int, context_length: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Random window starts (stride 1) over ``n_ids`` tokens: the windows a training step draws. (B,)"""
    high = n_ids - context_length - 1   # the last start that still has a target for every input
    if high < 0:
        raise ValueError(f"the text has {n_ids} tokens; it needs more than {context_length + 1}")
    return torch.randint(0, high + 1, (batch_size,), generator=generator)


def windows_at(ids: torch.Tensor, starts: torch.Tensor, context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input windows at ``starts`` and their targets (shifted by one). (B, n), (B, n)."""
    x = torch.stack([ids[s:s + context_length] for s in starts.tolist()])
    y = torch.stack([ids[s + 1:s + context_length + 1] for s in starts.tolist()])
    return x, y


def random_batch(ids: torch.Tensor, context_length: int, batch_size: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows at random offsets (stride 1): the batch a training step draws. (B, n), (B, n)."""
    return windows_at(ids, random_starts(len(ids), context_length, batch_size, generator), context_length)


def repeated_windows(ids: torch.Tensor, base: tuple[torch.Tensor, torch.Tensor], which: torch.Tensor,
                     generator: torch.Generator, vocab_size: int, random_share: float = 0.5,
                     min_span: int = 4, max_span: int = 60, ignore_index: int = -100,
                     pool: torch.Tensor | None = None, fill: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewrite the windows ``which`` of a batch so that a span is followed by itself again: the
    signal that teaches a model to copy in context (induction heads).

    Each chosen window keeps its own text around the insert: text[:p] + A + A + text[p:...], cut to
    the window's length. A is L tokens, L uniform in [min_span, max_span] (and at most half the
    window): with probability ``random_share`` uniform-random token ids (so the second copy can be
    predicted only by copying), drawn from ``pool`` (default: every id below ``vocab_size``), else a
    span of the training text from elsewhere. The first copy of a
    random span (and the first token of the second, which nothing predicts) carries no loss:
    ``ignore_index`` there. With ``fill``, a random span is instead repeated over the whole window
    (A + A + A ..., from position 0): many copies, so many targets that only copying predicts.
    Returns new (x, y); ``base`` is left as it was.
    """
    x, y = base[0].clone(), base[1].clone()                                    # (B, n), (B, n)
    n = x.shape[1]
    seq_len = n + 1
    top = max(min_span, min(max_span, seq_len // 2))
    for b in which.tolist():
        L = int(torch.randint(min_span, top + 1, (1,), generator=generator))
        p = int(torch.randint(0, seq_len - 2 * L + 1, (1,), generator=generator))
        is_random = float(torch.rand((), generator=generator)) < random_share
        if is_random:
            if pool is None:
                span = torch.randint(0, vocab_size, (L,), generator=generator)  # (L,)
            else:
                span = pool[torch.randint(0, len(pool), (L,), generator=generator)]  # (L,)
        else:
            s = int(torch.randint(0, len(ids) - L + 1, (1,), generator=generator))
            span = ids[s:s + L]                                                 # (L,)
        text = torch.cat([x[b, :1], y[b]])                                     # (n + 1,) the window's own text
        if fill and is_random:
            p = 0
            seq = span.repeat(-(-seq_len // L))[:seq_len]                      # (n + 1,) A + A + A ...
        else:
            seq = torch.cat([text[:p], span, span, text[p:]])[:seq_len]        # (n + 1,)
        x[b], y[b] = seq[:-1], seq[1:]
        if is_random:
            # Targets y[t] = seq[t + 1]: the first copy is seq[p:p+L], and seq[p+L] starts the second.
            y[b, max(0, p - 1):p + L] = ignore_index
    return x, y
