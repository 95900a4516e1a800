"""`looplm plot`: PNG curves from a metrics file, and clear errors for a bad one."""

from __future__ import annotations

import json

import pytest

from looplm.cli import main as cli
from looplm.plot import ema, plot_metrics


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _records():
    recs = [{"type": "event", "step": 0, "message": "start"}]
    for s in range(1, 21):
        recs.append({"type": "train", "step": s, "loss": 5 - 0.1 * s, "lr": 1e-3, "grad_norm": 1.0, "depth": 1 + s % 5,
                     "bptt": min(1 + s % 5, 3), "tokens_per_s": 1000.0, "mfu": 0.1, "step_ms": 10.0,
                     "skipped": s == 7, "tokens": 128 * s})
        if s % 10 == 0:
            recs.append({"type": "eval", "step": s, "val/clrs/loss@4": 4.0 - s / 10, "val/clrs/bpb@4": 3.0,
                         "val/clrs/loss@8": 3.9 - s / 10, "val/math/loss@4": 4.5, "val/math/bpb@4": 3.3})
    return recs


def test_plot_writes_pngs(tmp_path, capsys):
    metrics = _write(tmp_path / "metrics.jsonl", _records())
    assert cli(["plot", str(metrics), "--out", str(tmp_path / "plots")]) == 0
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["depth.png", "eval_bpb.png", "eval_loss.png", "train.png"]
    for name in names:
        data = (tmp_path / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert capsys.readouterr().out.count(".png") == 4


def test_plot_accepts_a_run_directory_and_skips_missing_figures(tmp_path):
    _write(tmp_path / "metrics.jsonl", [r for r in _records() if r["type"] != "eval"])
    written = plot_metrics(tmp_path, tmp_path / "plots")
    assert sorted(p.name for p in written) == ["depth.png", "train.png"]


def test_plot_errors(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_records()[1]) + "\n{not json\n")
    assert cli(["plot", str(bad), "--out", str(tmp_path / "p")]) == 2
    assert "bad.jsonl:2: not a JSON record" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no metrics file"):
        plot_metrics(tmp_path / "missing.jsonl", tmp_path / "p")


def test_ema():
    assert ema([1.0, 3.0, 3.0], 0.5) == [1.0, 2.0, 2.5]
