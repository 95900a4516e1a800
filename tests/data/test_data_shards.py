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


def make_docs_dir(d, doc_lengths: list[int], eos: int = 0, val: np.ndarray | None = None):
    """Documents of the given lengths joined by EOS (id 0); token k of document j is 1000 * (j + 1) + k;
    the loss mask is 1 on the second half of each document and on its EOS."""
    toks, mask = [], []
    for j, n in enumerate(doc_lengths):
        toks += [1000 * (j + 1) + k for k in range(n)] + [eos]
        mask += [0] * (n // 2) + [1] * (n - n // 2) + [1]
    toks, mask = np.array(toks, dtype=np.uint16), np.array(mask, dtype=np.uint8)
    m = make_dir(d, toks, shard_tokens=1 << 20, val=toks if val is None else val)
    mw, vw = ShardWriter(d, "train_mask", np.uint8), ShardWriter(d, "val_text_mask", np.uint8, single=True)
    mw.write(mask)
    vw.write(mask if val is None else np.ones(len(val), np.uint8))
    m.update(eos_id=eos, loss_mask={"train": {"shards": mw.close()}, "val": {"text": vw.close()[0]}})
    (d / MANIFEST).write_text(json.dumps(m))
    return toks, mask


def test_document_windows_open_at_a_document_and_carry_its_mask(tmp_path):
    lengths = [5, 40, 3, 12, 7, 25, 9, 2, 30, 6]
    toks, mask = make_docs_dir(tmp_path, lengths)
    data = PretrainData.open(tmp_path, verify=True)
    assert data.has_mask
    w = data.sample_windows(2000, 16, rng=5, windows="documents")
    assert w.tokens.shape == w.mask.shape == w.valid.shape == (2000, 17)
    assert (w.tokens[:, 0] == 0).all() and (w.tokens[:, 1] // 1000 > 0).all()  # EOS, then a document's first token
    assert (w.tokens[:, 1] % 1000 == 0).all()
    for row, m, v in zip(w.tokens, w.mask, w.valid):  # every valid window is the stream from its start
        s = int(np.flatnonzero(toks == row[1])[0]) - 1
        n = int(v.sum())
        assert np.array_equal(row[:n], toks[s: s + n]) and np.array_equal(m[:n], mask[s: s + n])
        assert n == min(17, len(toks) - s) and (row[n:] == 0).all() and not m[n:].any()  # padded past the end
    docs = w.tokens[:, 1] // 1000 - 1
    share = np.bincount(docs, minlength=len(lengths)) / len(docs)
    weight = (np.array(lengths) + 1) / (sum(lengths) + len(lengths))  # the first document has no EOS before it
    weight[0] = 0
    assert np.abs(share - weight / weight.sum()).max() < 0.03  # drawn in proportion to length
    again = data.sample_windows(2000, 16, rng=5, windows="documents")
    assert np.array_equal(again.tokens, w.tokens)
    r0 = data.sample_windows(300, 8, rng=0, rank=0, world_size=2, windows="documents").tokens[:, 1]
    r1 = data.sample_windows(300, 8, rng=0, rank=1, world_size=2, windows="documents").tokens[:, 1]
    assert not set(r0.tolist()) & set(r1.tolist())  # ranks start in disjoint halves
    rand = data.sample_windows(50, 8, rng=1)
    assert rand.valid.all() and np.array_equal(rand.tokens, data.sample_batch(50, 8, rng=1))
    with pytest.raises(ValueError, match="windows must be 'random' or 'documents'"):
        data.sample_windows(2, 8, rng=0, windows="docs")


def test_iter_documents_scores_every_document_once(tmp_path):
    lengths = [5, 40, 3, 12, 7, 25, 9, 2, 30, 6]
    toks, _ = make_docs_dir(tmp_path, lengths)
    data = PretrainData.open(tmp_path)
    seen = []
    for w in data.iter_documents(3, 16, split="text"):
        for row, v in zip(w.tokens, w.valid):
            body = row[v]
            assert body[0] == 0 and (body[-1] == 0 or len(body) == 17)  # opening EOS ... closing EOS (or cut)
            assert not (body[1:-1] == 0).any()  # nothing of the next document
            seen.append(int(body[1]) // 1000 - 1)
    assert seen == list(range(1, 1 + 9 // 3 * 3))  # documents 1..9 in order (the first has no EOS before it)
    per_rank = [[int(w.tokens[r, 1]) for w in data.iter_documents(2, 16, rank=k, world_size=2, split="text")
                 for r in range(2)] for k in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 4 and not set(per_rank[0]) & set(per_rank[1])


def test_loss_mask_errors(tmp_path):
    make_dir(tmp_path / "plain", np.arange(100, dtype=np.uint16), shard_tokens=1000)
    assert not PretrainData.open(tmp_path / "plain").has_mask
    with pytest.raises(ManifestError, match="no eos_id"):
        PretrainData.open(tmp_path / "plain").sample_windows(2, 8, rng=0, windows="documents")
    make_docs_dir(tmp_path / "bad", [5, 6, 7], val=np.arange(30, dtype=np.uint16))
    m = json.loads((tmp_path / "bad" / MANIFEST).read_text())
    del m["loss_mask"]["val"]
    (tmp_path / "bad" / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="incomplete loss_mask entry"):
        PretrainData.open(tmp_path / "bad")
