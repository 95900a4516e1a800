"""The phase runner: order, skipping finished phases, input hashes, --from/--until, failures."""

from __future__ import annotations

import json

import pytest

from looplm.reproduce.runner import Context, Phase, PhaseFailed, run_phases


class Cfg:
    knob = 1


def make(tmp_path, calls, fail=None):
    def body(name):
        def run(ctx):
            calls.append(name)
            if name == fail:
                raise RuntimeError("boom")
            f = ctx.path(f"{name}.txt")
            f.write_text(name)
            return {"out_file": str(f)}
        return run

    cfg = Cfg()
    ps = [Phase("a", body("a"), (), lambda ctx: {"knob": cfg.knob}),
          Phase("b", body("b"), ("a",)), Phase("c", body("c"), ("b",))]
    return Context(cfg=cfg, budget=None, out=tmp_path), ps, cfg


def test_runs_in_order_then_skips_up_to_date(tmp_path):
    calls: list[str] = []
    ctx, ps, _ = make(tmp_path, calls)
    run_phases(ctx, ps, echo=lambda s: None)
    run_phases(ctx, ps, echo=lambda s: None)
    assert calls == ["a", "b", "c"]
    man = json.loads((tmp_path / "reproduce.json").read_text())
    assert all(man["phases"][p]["status"] == "done" for p in "abc")


def test_changed_settings_rerun_that_phase_and_everything_downstream(tmp_path):
    calls: list[str] = []
    ctx, ps, cfg = make(tmp_path, calls)
    run_phases(ctx, ps, echo=lambda s: None)
    cfg.knob = 2
    run_phases(ctx, ps, echo=lambda s: None)
    assert calls == ["a", "b", "c", "a", "b", "c"]


def test_missing_output_reruns_phase(tmp_path):
    calls: list[str] = []
    ctx, ps, _ = make(tmp_path, calls)
    run_phases(ctx, ps, echo=lambda s: None)
    (tmp_path / "c.txt").unlink()
    run_phases(ctx, ps, echo=lambda s: None)
    assert calls == ["a", "b", "c", "c"]


def test_from_and_until_select_a_range(tmp_path):
    calls: list[str] = []
    ctx, ps, _ = make(tmp_path, calls)
    run_phases(ctx, ps, stop="b", echo=lambda s: None)
    assert calls == ["a", "b"]
    run_phases(ctx, ps, start="c", echo=lambda s: None)
    assert calls == ["a", "b", "c"]
    with pytest.raises(ValueError, match="phases in order: a, b, c"):
        run_phases(ctx, ps, start="zzz", echo=lambda s: None)


def test_from_needs_earlier_phases_done(tmp_path):
    ctx, ps, _ = make(tmp_path, [])
    with pytest.raises(PhaseFailed, match="earlier phase 'a'"):
        run_phases(ctx, ps, start="b", echo=lambda s: None)


def test_failed_phase_stops_the_run_and_names_its_log(tmp_path):
    calls: list[str] = []
    ctx, ps, _ = make(tmp_path, calls, fail="b")
    with pytest.raises(PhaseFailed, match=r"phase 'b' failed: RuntimeError: boom[\s\S]*logs/b.log"):
        run_phases(ctx, ps, echo=lambda s: None)
    assert calls == ["a", "b"]
    assert "RuntimeError: boom" in (tmp_path / "logs" / "b.log").read_text()
    assert json.loads((tmp_path / "reproduce.json").read_text())["phases"]["b"]["status"] == "failed"
