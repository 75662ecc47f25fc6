"""How toy_choice.jsonl and toy_word.jsonl were made (run once; the files are committed).

The toy's planted writer head (8, 3) reads the massive activation at position 0 and writes
about 50 into dim 40 at every position, so every block output from block 8 on, and so the
toy's next-token logits, are dominated by each token's embedding entry in dim 40: the
baseline prefers the word whose `wte[word, 40]` is largest. Zeroing the massive activation
(block 2) shrinks that write to about 2, and the rest of the context then decides.

- toy_choice: 4 single-word choices after a corpus sentence; the answer is the choice with
  the largest `wte[., 40]` (the planted structure decides), which the baseline picks in
  every document; 4 documents are picked where the zeroed model picks another choice and
  4 where it picks the answer too, each by a clear margin: zeroing the massive
  activation moves accuracy from 1 to 0.5 (-50 points).
- toy_word: a corpus sentence and the word the baseline predicts next (greedy); 4
  documents where the zeroed model predicts another word, 4 where it predicts the same.

    .venv/bin/python tests/data/tasks/make_toy_tasks.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from lit_massive.models.toy import ToyConfig, build_toy_model, build_toy_tokenizer, corpus_path

HERE = Path(__file__).parent
MARGIN = 0.05  # nats between the best and second-best choice, for both models


def zero_massive(module, args, output):
    """Block 2's output with its massive entries (|x| > 100 and > 1000 x the median) at 0."""
    x = output[0] if isinstance(output, tuple) else output
    median = x.abs().flatten(1).median(dim=1).values[:, None, None]
    x = x.masked_fill((x.abs() > 100) & (x.abs() > 1000 * median), 0.0)
    return (x, *output[1:]) if isinstance(output, tuple) else x


@torch.no_grad()
def next_logprobs(model, ids: list[int], zero: bool) -> torch.Tensor:
    handle = model.transformer.h[ToyConfig().massive_layer].register_forward_hook(zero_massive) if zero else None
    try:
        return model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
    finally:
        if handle is not None:
            handle.remove()


def margin_argmax(values: list[float]) -> tuple[int, float]:
    order = sorted(range(len(values)), key=lambda i: -values[i])
    return order[0], values[order[0]] - values[order[1]]


def main() -> None:
    rng = random.Random(0)
    model, tok = build_toy_model(), build_toy_tokenizer()
    wte = model.transformer.wte.weight[:, ToyConfig().written_dim]
    vocab = tok.get_vocab()
    words = sorted(w for w in vocab if w.isalpha() and w.islower() and len(w) > 2)
    lines = [line.split() for line in corpus_path().read_text(encoding="utf-8").splitlines()]
    # runs of 4 to 10 words of the corpus between its other tokens (numbers, punctuation)
    sentences, run = [], []
    for token in (t for line in lines for t in [*line, "."]):
        if token.isalpha():
            run.append(token)
            continue
        if len(run) >= 4:
            sentences.append(" ".join(run[: rng.randint(4, 10)]))
        run = []
    rng.shuffle(sentences)
    choice, word = {True: [], False: []}, {True: [], False: []}
    for text in sentences:
        ids = tok.encode(text)
        base, zero = next_logprobs(model, ids, False), next_logprobs(model, ids, True)
        for _ in range(20):  # choice sets for this sentence, until one is kept
            options = rng.sample(words, 4)
            planted = max(range(4), key=lambda i: wte[vocab[options[i]]].item())
            b, bm = margin_argmax([base[vocab[w]].item() for w in options])
            z, zm = margin_argmax([zero[vocab[w]].item() for w in options])
            if b == planted and min(bm, zm) > MARGIN and len(choice[z != b]) < 4:
                choice[z != b].append({"query": text, "choices": options, "gold": planted})
                break
        b, bm = margin_argmax(base.tolist())
        z, zm = margin_argmax(zero.tolist())
        target = tok.convert_ids_to_tokens(b)
        if target.isalpha() and min(bm, zm) > MARGIN and len(word[z != b]) < 4:
            word[z != b].append({"context": text, "target": target})
        if all(len(v) == 4 for d in (choice, word) for v in d.values()):
            break
    else:
        raise RuntimeError(f"not enough documents: {[len(v) for d in (choice, word) for v in d.values()]}")
    for name, docs in (("toy_choice", choice), ("toy_word", word)):
        rows = docs[True] + docs[False]
        rng.shuffle(rows)
        (HERE / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
