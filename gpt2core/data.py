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
