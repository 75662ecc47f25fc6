"""Token windows: the corpus's tokens cut into fixed-length windows, the dataset over them,
and a sampler that never repeats one.

The `text` column joined with "\\n\\n", tokenised once without special tokens, is cut into
`seq_len`-token windows every `stride` tokens; a shorter tail is dropped and
`num_sequences` takes the first N. With BOS, a window is the BOS token followed by
`seq_len - 1` text tokens and `stride` counts text tokens.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler, default_collate

from lit_massive.errors import InputError

FILLER = -1  # the index of a lockstep filler window


def count_windows(num_tokens: int, seq_len: int, stride: int) -> int:
    """How many full windows fit in `num_tokens`."""
    return 0 if num_tokens < seq_len else (num_tokens - seq_len) // stride + 1


def make_windows(
    ids: Tensor, seq_len: int, stride: int, num_sequences: int | None, bos_token_id: int | None = None
) -> Tensor:
    """Cut a 1-D token tensor into (N, seq_len) windows starting every `stride` tokens; with
    a BOS token, each window is BOS + seq_len - 1 text tokens and `stride` counts text tokens."""
    text_len = seq_len if bos_token_id is None else seq_len - 1
    available = count_windows(len(ids), text_len, stride)
    if num_sequences is not None and num_sequences > available:
        raise InputError(
            f"num_sequences={num_sequences} but the text gives only {available} windows of "
            f"seq_len={seq_len} with stride={stride} ({len(ids)} tokens); use num_sequences <= "
            f"{available} or null for all"
        )
    n = available if num_sequences is None else num_sequences
    windows = ids.unfold(0, text_len, stride)[:n]
    if bos_token_id is None:
        return windows.clone()
    return torch.cat([windows.new_full((n, 1), bos_token_id), windows], dim=1)


def tokenizer_bos(tokenizer) -> int | None:
    """The BOS id `tokenizer` puts first when called with `add_special_tokens=True` (Llama,
    Mistral, Gemma, OPT), else None (GPT-2, Pythia, Qwen)."""
    bos, text = tokenizer.bos_token_id, "Summer is warm."
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    special = tokenizer(text, add_special_tokens=True)["input_ids"]
    return bos if bos is not None and special[: len(plain) + 1] == [bos, *plain] else None


class Windows(Dataset):
    """Map-style dataset over precomputed windows.

    Item i is `{"input_ids": (seq_len,), "score_from": int, "index": i}`: perplexity scores the tokens
    at positions >= score_from, i.e. those the previous window did not cover (the Hugging
    Face fixed-length recipe); the first window scores every token that has a context.
    With `bos`, position 0 is the BOS token, never a target, and `stride` counts text tokens.
    """

    def __init__(self, windows: Tensor, stride: int | None = None, bos: bool = False) -> None:
        self.windows = windows
        text_len = windows.shape[1] - bos
        self.overlap_from = max(1, text_len - (stride or text_len) + bos)

    def __len__(self) -> int:
        return self.windows.shape[0]

    def __getitem__(self, i: int) -> dict[str, Tensor | int]:
        if i == FILLER:  # see UnpaddedDistributedSampler: runs through the model, counts nowhere
            return {"input_ids": self.windows[0], "score_from": 1, "index": FILLER}
        return {"input_ids": self.windows[i], "score_from": 1 if i == 0 else self.overlap_from, "index": i}


def collate_windows(items: list[dict]) -> dict[str, Tensor | list[int]]:
    """A batch of `Windows` items; the window indices stay a list of Python ints, which
    Lightning leaves on the host: they seed the random control's generators, and reading
    them back from a GPU inside the measured step would stall it."""
    batch = default_collate([{k: v for k, v in item.items() if k != "index"} for item in items])
    return {**batch, "index": [int(item["index"]) for item in items]}



class UnpaddedDistributedSampler(DistributedSampler):
    """Rank r takes windows r, r + W, r + 2W, ...: every window exactly once over all ranks.

    Lightning's default `DistributedSampler` pads the last round by repeating windows,
    which would count them twice. Subclassing `DistributedSampler` tells Lightning to keep
    this sampler as it is. With `lockstep` (sharded layers: every forward pass is a
    collective), a rank with fewer windows ends with FILLER items, so all ranks run the
    same number of batches; the module runs fillers through the model and counts none.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, lockstep: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.own = len(range(rank, len(dataset), num_replicas))
        self.num_samples = -(-len(dataset) // num_replicas) if lockstep else self.own

    def __iter__(self) -> Iterator[int]:
        yield from range(self.rank, len(self.dataset), self.num_replicas)
        yield from [FILLER] * (self.num_samples - self.own)

    def __len__(self) -> int:
        return self.num_samples
