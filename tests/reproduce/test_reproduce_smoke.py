"""`looplm reproduce --preset smoke`: every phase of the pipeline end to end at toy size, then a re-run
that skips everything, and the report card's sections."""

from __future__ import annotations

import json

import pytest

from looplm.cli import main
from looplm.config import ConfigError
from looplm.reproduce import check_device
from looplm.reproduce.config import ReproduceConfig
from looplm.reproduce.depth_eval import check_sweep
from looplm.reproduce.phases import phases


def test_whole_pipeline_at_toy_size(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["reproduce", "--preset", "smoke", "--out", str(out)]) == 0
    names = [p.name for p in phases(ReproduceConfig(preset="smoke"))]
    man = json.loads((out / "reproduce.json").read_text())
    assert [n for n in names if man["phases"][n]["status"] == "done"] == names
    report = (out / "report.md").read_text()
    assert report.split("\n\n")[2].startswith("| claim (research report) |")  # the claims table comes first
    for section in ("Model and parameters", "Pre-training data", "GRPO", "AdaExit", "Speculative heads",
                    "Pathology audit", "alignment tax", "Replay", "Core KV ablation", "Wall time per phase",
                    "AdaExit exit step per token kind", "Test-time depth on larger graphs"):
        assert section in report, section
    sweep = check_sweep(json.loads((out / "eval-depth" / "depth_sweep.json").read_text()))
    assert sweep and all(e["depths"] == [3, 6, 12] and e["n"] == 4 for e in sweep.values())  # smoke R = 3
    assert "| dfs-verbal | 9-10 nodes (trained: 4 nodes) | 12 |" in report
    cal = json.loads((out / "calibrate-halt" / "calibration.json").read_text())
    assert cal["exit_steps_by_kind"]["kinds"] and (out / "calibrate-halt" / "exit_steps_by_kind.png").is_file()
    assert (out / "report.html").read_text().startswith("<!doctype html>")
    assert "data:image/png;base64," in (out / "report.html").read_text()
    capsys.readouterr()
    assert main(["reproduce", "--preset", "smoke", "--out", str(out)]) == 0
    lines = capsys.readouterr().out
    assert lines.count("up to date (skipped)") == len(names) - 1  # all but the report


def test_report_scale_refuses_cpu_without_flag():
    with pytest.raises(ConfigError, match="--allow-cpu"):
        check_device(ReproduceConfig(preset="report-200m", device="auto"))
