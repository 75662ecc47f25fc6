"""Windows from local files: exact ids, stride, num_sequences, tail dropped; streaming = map-style."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lit_massive.data import UnpaddedDistributedSampler, Windows, WindowsDataModule
from lit_massive.errors import InputError
from lit_massive.models.toy import build_toy_tokenizer, corpus_path


def _windows(**kwargs) -> torch.Tensor:
    dm = WindowsDataModule(model_name_or_path="toy", **kwargs)
    dm.setup("validate")
    return dm.windows


def _reference_ids(texts: list[str]) -> list[int]:
    return build_toy_tokenizer()("\n\n".join(texts), add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("stride", [None, 10, 32])
def test_windows_are_exact_token_slices(corpus_jsonl, stride):
    texts = [json.loads(line)["text"] for line in corpus_jsonl.read_text().splitlines()]
    ids = _reference_ids(texts)
    step = stride or 32
    got = _windows(data_files=str(corpus_jsonl), seq_len=32, stride=stride, num_sequences=None)
    expected = [ids[s : s + 32] for s in range(0, len(ids) - 32 + 1, step)]
    assert got.tolist() == expected  # every full window, the short tail dropped
    assert len(ids) - (len(expected) - 1) * step - 32 < step  # the dropped tail is short
    first5 = _windows(data_files=str(corpus_jsonl), seq_len=32, stride=stride, num_sequences=5)
    assert first5.tolist() == expected[:5]


def test_formats_agree(tmp_path, corpus_jsonl):
    """parquet, jsonl and txt (one row per line) copies of the same rows give the same windows."""
    lines = corpus_path().read_text().splitlines()
    txt = tmp_path / "wiki.txt"
    txt.write_text("\n".join(lines) + "\n")
    parquet = tmp_path / "wiki.parquet"
    pq.write_table(pa.table({"text": lines, "id": list(range(len(lines)))}), parquet)
    jsonl = tmp_path / "lines.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    windows = [_windows(data_files=str(p), seq_len=40, num_sequences=None) for p in (txt, parquet, jsonl)]
    flat = _reference_ids(lines)
    assert windows[0].flatten().tolist() == flat[: windows[0].numel()]
    for w in windows[1:]:
        assert torch.equal(w, windows[0])


@pytest.mark.parametrize("num_sequences", [1, 3, None])
@pytest.mark.parametrize("stride", [None, 16])
def test_streaming_gives_the_same_windows(corpus_jsonl, num_sequences, stride):
    kwargs = dict(data_files=str(corpus_jsonl), seq_len=64, stride=stride, num_sequences=num_sequences)
    assert torch.equal(_windows(streaming=True, **kwargs), _windows(streaming=False, **kwargs))


def test_toy_dataset_is_the_bundled_corpus():
    lines = corpus_path().read_text().splitlines()
    got = _windows(dataset="toy", seq_len=50, num_sequences=4)
    assert got.flatten().tolist() == _reference_ids(lines)[:200]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seq_len": 0}, "seq_len=0: must be > 0"),
        ({"stride": 0}, "stride=0: must be > 0"),
        ({"num_sequences": 0}, "num_sequences=0: must be > 0"),
        ({"batch_size": 0}, "batch_size=0: must be > 0"),
        ({"num_workers": -1}, "num_workers=-1: must be >= 0"),
        ({"bos": "maybe"}, "bos='maybe' is not valid; valid: true, false, auto"),
        ({"stride": 65, "seq_len": 64}, "stride=65 is above seq_len=64"),
        ({"bos": True, "seq_len": 1}, "a BOS window needs seq_len >= 2"),
    ],
)
def test_python_callers_get_the_one_line_errors(kwargs, message):
    with pytest.raises(InputError) as info:
        WindowsDataModule(dataset="toy", **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_null_and_bool_options_pass_the_type_checks():
    dm = WindowsDataModule(dataset="toy", stride=None, num_sequences=None, bos=False, model_name_or_path="toy")
    dm.setup("validate")
    assert dm.describe()["num_windows"] == dm.windows.shape[0] > 0 and not dm.uses_bos


@pytest.mark.parametrize("n", [1, 2, 7, 10])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_sampler_neither_repeats_nor_drops(n, world):
    dataset = Windows(torch.zeros(n, 3))
    seen = []
    for rank in range(world):
        sampler = UnpaddedDistributedSampler(dataset, num_replicas=world, rank=rank)
        indices = list(sampler)
        assert len(indices) == len(sampler)
        seen += indices
    assert sorted(seen) == list(range(n))
