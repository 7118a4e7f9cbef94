"""Values that may name hub repositories fail at once when they cannot be found: a misspelt
local folder is named as such with its near miss, and an unreachable hub is said in one line
instead of transformers' minute of retries."""

from __future__ import annotations

import time

import pytest

from vlcontrast.hub import check_source
from vlcontrast.schema import ConfigError


@pytest.fixture(autouse=True)
def unreachable_hub(monkeypatch):
    from vlcontrast import hub

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_REACHABLE", {})


def test_a_misspelt_folder_is_a_missing_path_with_its_near_miss(tmp_path, monkeypatch):
    (tmp_path / "tok").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        check_source("text.tokenizer", "toks", "a tokenizer directory")
    assert str(err.value) == (
        "text.tokenizer: toks does not exist (expected a tokenizer directory or a hub name); "
        "did you mean tok?"
    )
    with pytest.raises(ConfigError, match=r"did you mean .*/tok\?"):
        check_source("text.tokenizer", str(tmp_path / "tokk"), "a tokenizer directory")
    with pytest.raises(ConfigError, match="./nothing does not exist"):
        check_source("text.tokenizer", "./nothing", "a tokenizer directory")
    check_source("text.tokenizer", "tok", "a tokenizer directory")  # exists: fine


def test_an_unreachable_hub_is_one_message_at_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="text.model: org/some-model is not a local path and the"):
        check_source("text.model", "org/some-model", "a model directory")
    assert time.perf_counter() - start < 5
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline mode: the cache decides
    check_source("text.model", "org/some-model", "a model directory")


def test_the_tokenizer_loader_uses_the_check(tmp_path, monkeypatch):
    from vlcontrast.config import TextTowerConfig
    from vlcontrast.models.text_tower import load_tokenizer

    (tmp_path / "tok").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="did you mean tok"):
        load_tokenizer(TextTowerConfig(tokenizer="toks"))
