"""ShardWriter packing and the PretrainData reader: errors, random and sequential windows, ranks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from looplm.data.shards import FORMAT, MANIFEST, ManifestError, PretrainData, ShardWriter, file_sha256


def make_dir(d, train: np.ndarray, shard_tokens: int, val: np.ndarray | None = None):
    """A minimal pre-training directory whose token values equal their positions."""
    d.mkdir(parents=True, exist_ok=True)
    w = ShardWriter(d, "train", np.uint16, shard_tokens=shard_tokens, buffer_tokens=7)
    for piece in np.array_split(train, 13):
        w.write(piece)
    shards = w.close()
    vw = ShardWriter(d, "val_text", np.uint16, single=True)
    vw.write(np.arange(50, dtype=np.uint16) if val is None else val)
    manifest = {"format": FORMAT, "vocab_size": 65535, "dtype": "uint16", "tokenizer_sha256": "x" * 64,
                "train": {"tokens": len(train), "shards": shards}, "val": {"text": vw.close()[0]},
                "domains": {}}
    (d / MANIFEST).write_text(json.dumps(manifest))
    return manifest


def test_writer_splits_into_shards_with_hashes(tmp_path):
    tokens = np.arange(1000, dtype=np.uint16)
    m = make_dir(tmp_path, tokens, shard_tokens=300)
    shards = m["train"]["shards"]
    assert [s["tokens"] for s in shards] == [300, 300, 300, 100]
    assert [s["file"] for s in shards] == [f"train_{i:05d}.bin" for i in range(4)]
    back = np.concatenate([np.fromfile(tmp_path / s["file"], dtype=np.uint16) for s in shards])
    assert np.array_equal(back, tokens)
    assert all(file_sha256(tmp_path / s["file"]) == s["sha256"] for s in shards)


def test_open_errors(tmp_path):
    with pytest.raises(ManifestError, match="no manifest.json"):
        PretrainData.open(tmp_path)
    (tmp_path / MANIFEST).write_text("{broken")
    with pytest.raises(ManifestError, match="corrupt manifest"):
        PretrainData.open(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": FORMAT}))
    with pytest.raises(ManifestError, match="lacks field"):
        PretrainData.open(tmp_path)
    d = tmp_path / "ok"
    make_dir(d, np.arange(100, dtype=np.uint16), shard_tokens=60)
    (d / "train_00001.bin").write_bytes(b"\0\0")
    with pytest.raises(ManifestError, match="train_00001.bin: 2 bytes"):
        PretrainData.open(d)
    (d / "train_00001.bin").unlink()
    with pytest.raises(ManifestError, match="train_00001.bin listed in the manifest is missing"):
        PretrainData.open(d)


def test_verify_detects_changed_shard(tmp_path):
    make_dir(tmp_path, np.arange(100, dtype=np.uint16), shard_tokens=1000)
    PretrainData.open(tmp_path, verify=True)
    raw = bytearray((tmp_path / "train_00000.bin").read_bytes())
    raw[0] ^= 1
    (tmp_path / "train_00000.bin").write_bytes(bytes(raw))
    PretrainData.open(tmp_path)  # sizes still match
    with pytest.raises(ManifestError, match="sha256 differs"):
        PretrainData.open(tmp_path, verify=True)


def test_sample_batch_windows_are_contiguous_and_seeded(tmp_path):
    make_dir(tmp_path, np.arange(5000, dtype=np.uint16), shard_tokens=1234)
    data = PretrainData.open(tmp_path)
    assert data.train_tokens == 5000 and len(data.train) == 5
    b = data.sample_batch(64, 31, rng=3)
    assert b.shape == (64, 32) and b.dtype == np.int64
    assert np.all(np.diff(b, axis=1) == 1)  # a real slice, never crossing a shard boundary
    assert np.array_equal(b, data.sample_batch(64, 31, rng=3))
    assert not np.array_equal(b, data.sample_batch(64, 31, rng=4))
    assert data.sample_batch(4, 10, rng=0, split="text").shape == (4, 11)
    with pytest.raises(ValueError, match="too short"):
        data.sample_batch(2, 2000, rng=0)
    with pytest.raises(KeyError, match="unknown split"):
        data.sample_batch(2, 10, rng=0, split="nope")


def test_ranks_get_disjoint_random_windows(tmp_path):
    make_dir(tmp_path, np.arange(4000, dtype=np.uint16), shard_tokens=10_000)
    data = PretrainData.open(tmp_path)
    r0 = data.sample_batch(200, 15, rng=0, rank=0, world_size=2)
    r1 = data.sample_batch(200, 15, rng=0, rank=1, world_size=2)
    assert r0.max() < 2000 <= r1.min()
    with pytest.raises(ValueError, match="rank"):
        data.sample_batch(2, 10, rng=0, rank=2, world_size=2)


def test_iter_batches_sequential_and_disjoint_across_ranks(tmp_path):
    make_dir(tmp_path, np.arange(1001, dtype=np.uint16), shard_tokens=10_000)
    data = PretrainData.open(tmp_path)
    single = list(data.iter_batches(4, 10))
    assert len(single) == 25  # 100 windows of stride 10 -> 25 batches of 4
    starts = np.concatenate([b[:, 0] for b in single])
    assert np.array_equal(starts, np.arange(0, 1000, 10))
    assert np.all(np.diff(single[0], axis=1) == 1)
    ranks = [list(data.iter_batches(4, 10, rank=r, world_size=3)) for r in range(3)]
    assert len({len(x) for x in ranks}) == 1 and len(ranks[0]) == 8  # 100 // 12 rounds
    firsts = [set(np.concatenate([b[:, 0] for b in x]).tolist()) for x in ranks]
    assert not (firsts[0] & firsts[1]) and not (firsts[1] & firsts[2]) and not (firsts[0] & firsts[2])
    assert len(list(data.iter_batches(2, 10, split="text"))) == 2
