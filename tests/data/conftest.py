"""Fixtures for the data tests: a small default tokenizer on disk, a synthetic English text file
(hermetic stand-in for WikiText) and small local GSM8K/Alpaca-format files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_helpers import WORDS, write_text_file


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory) -> Path:
    from looplm.tokenizer import train_default_tokenizer

    d = tmp_path_factory.mktemp("tok")
    train_default_tokenizer(vocab_size=512, seed=0, n_texts=400).save(d)
    return d


@pytest.fixture
def text_file(tmp_path) -> Path:
    return write_text_file(tmp_path / "wiki.raw", 400)


@pytest.fixture
def gsm8k_dir(tmp_path) -> Path:
    d = tmp_path / "gsm8k"
    d.mkdir()
    for split, n in (("train", 60), ("test", 20)):
        with (d / f"{split}.jsonl").open("w") as f:
            for i in range(n):
                a, b = i + 2, 7 * i + (0 if split == "train" else 1000)
                f.write(json.dumps({"question": f"Tom has {a} bags of {b} apples ({split}). How many apples?",
                                    "answer": f"He has {a} * {b} = <<{a}*{b}={a * b}>>{a * b} apples.\n"
                                              f"#### {a * b}"}) + "\n")
    return d


@pytest.fixture
def alpaca_file(tmp_path) -> Path:
    rows = [{"instruction": f"Write a sentence about {w} number {i}.", "input": "" if i % 2 else "short",
             "output": f"Here is a sentence about the {w} {i}."} for i, w in enumerate(WORDS * 3)]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows))
    return path
