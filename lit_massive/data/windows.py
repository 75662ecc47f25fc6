"""Token windows: the corpus's tokens cut into fixed-length windows, the dataset over them,
and a sampler that never repeats one.

The `text` column joined with "\\n\\n", tokenised once without special tokens, is cut into
`seq_len`-token windows every `stride` tokens; a shorter tail is dropped and
`num_sequences` takes the first N. With BOS, a window is the BOS token followed by
`seq_len - 1` text tokens and `stride` counts text tokens.

With the text and the tokens' character offsets in it, each window also knows the UTF-8
bytes and the whitespace-separated words of the text its scored tokens cover
(`window_text_counts`), for bits per byte, byte and word perplexity.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from lit_massive.errors import InputError
from lit_massive.models.sharding import is_sharded

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


def first_scored(i: int, text_len: int, stride: int, bos: bool) -> int:
    """Position of the first scored token of window i (`Windows`' `score_from`)."""
    return 1 if i == 0 else max(1, text_len - stride + bos)


def window_text_counts(
    text: str, offsets, num_windows: int, seq_len: int, stride: int, bos: bool
) -> tuple[list[int], list[int]]:
    """Per window, (UTF-8 bytes, words) of the text its scored tokens cover.

    `offsets` are the (start, end) character offsets in `text` of the tokens the windows were
    cut from. A window's span runs from the end of the previous window's span when its first
    scored token follows the previous window's last one (so spans abut and their bytes sum
    to those of the whole scored text, the whitespace between tokens included), else from
    its first scored token's start; it ends at its last scored token's end. Words are those
    of `str.split()` over each run of consecutive scored tokens' text, each counted in the
    window where it starts, so a word split across two windows counts once. BOS is never
    scored: it is no token of the text.
    """
    text_len = seq_len - bos
    scored_bytes, scored_words = [], []
    prev_last, prev_end = -2, 0
    for i in range(num_windows):
        first = i * stride + first_scored(i, text_len, stride, bos) - bos  # token index in the text
        last = i * stride + text_len - 1
        contiguous = first == prev_last + 1
        start = prev_end if contiguous else max(int(offsets[first][0]), prev_end)
        end = max(int(offsets[last][1]), start)
        piece = text[start:end]
        words = len(piece.split())
        if contiguous and piece and 0 < start and not piece[0].isspace() and not text[start - 1].isspace():
            words -= 1  # the word began in the previous window's span
        scored_bytes.append(len(piece.encode("utf-8")))
        scored_words.append(words)
        prev_last, prev_end = last, end
    return scored_bytes, scored_words


class Windows(Dataset):
    """Map-style dataset over precomputed windows.

    Item i is `{"input_ids": (seq_len,), "score_from": int, "index": i}`: perplexity scores the tokens
    at positions >= score_from, i.e. those the previous window did not cover (the Hugging
    Face fixed-length recipe); the first window scores every token that has a context.
    With `bos`, position 0 is the BOS token, never a target, and `stride` counts text tokens.
    With `counts` (`window_text_counts`), items also hold `scored_bytes` and `scored_words`.
    """

    def __init__(
        self,
        windows: Tensor,
        stride: int | None = None,
        bos: bool = False,
        counts: tuple[list[int], list[int]] | None = None,
    ) -> None:
        self.windows, self.counts = windows, counts
        text_len = windows.shape[1] - bos
        self.overlap_from = first_scored(1, text_len, stride or text_len, bos)

    def __len__(self) -> int:
        return self.windows.shape[0]

    def __getitem__(self, i: int) -> dict[str, Tensor | int]:
        if i == FILLER:  # see UnpaddedDistributedSampler: runs through the model, counts nowhere
            item = {"input_ids": self.windows[0], "score_from": 1, "index": FILLER}
            return item if self.counts is None else {**item, "scored_bytes": 0, "scored_words": 0}
        item = {"input_ids": self.windows[i], "score_from": 1 if i == 0 else self.overlap_from, "index": i}
        if self.counts is not None:
            item["scored_bytes"], item["scored_words"] = self.counts[0][i], self.counts[1][i]
        return item


HOST_KEYS = ("index", "scored_bytes", "scored_words")  # batch entries kept as lists of Python ints


def collate_windows(items: list[dict]) -> dict[str, Tensor | list[int]]:
    """A batch of `Windows` items; the window indices (and text counts) stay lists of Python
    ints, which Lightning leaves on the host: the indices seed the random control's generators,
    and reading them back from a GPU inside the measured step would stall it."""
    batch = default_collate([{k: v for k, v in item.items() if k not in HOST_KEYS} for item in items])
    return {**batch, **{k: [int(item[k]) for item in items] for k in HOST_KEYS if k in items[0]}}


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


def cut_windows(
    tokens, seq_len: int, stride: int, num_sequences: int | None, bos_token_id: int | None
) -> tuple[Tensor, tuple[list[int], list[int]] | None]:
    """`make_windows` of a tokenised text (`text.Tokenized`), and each window's scored bytes
    and words (`window_text_counts`) when the tokenizer gave character offsets, else None."""
    windows = make_windows(tokens.ids, seq_len, stride, num_sequences, bos_token_id)
    if tokens.offsets is None:
        return windows, None
    counts = window_text_counts(
        tokens.text, tokens.offsets.tolist(), len(windows), seq_len, stride, bos_token_id is not None
    )
    return windows, counts


def window_loader(dataset: Windows, trainer, batch_size: int, num_workers: int = 0) -> DataLoader:
    """The validation loader of `dataset` for this process: its own windows, none repeated
    (lockstep fillers when the layers are sharded); every process needs at least one."""
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    check_processes(len(dataset), world)
    sampler = UnpaddedDistributedSampler(dataset, num_replicas=world, rank=rank, lockstep=is_sharded(trainer))
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate_windows
    )


def check_processes(num_windows: int, world: int) -> None:
    """Every process needs at least one window."""
    if num_windows < world:
        raise InputError(
            f"{num_windows} windows for {world} processes; every process needs one: "
            f"use data.num_sequences >= {world} or fewer devices"
        )
