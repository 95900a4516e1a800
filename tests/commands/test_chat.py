"""`looplm chat`: switches, streamed replies with statistics, and a scripted session."""

from __future__ import annotations

import io

import torch

from looplm.checkpoint import save_checkpoint
from looplm.cli import main
from looplm.commands.chat import ChatSettings, apply_command, reply
from looplm.model import RecursiveCausalLM


def test_switches_change_settings():
    s, out = ChatSettings(), io.StringIO()
    assert apply_command("/steps 5", s, out) and s.steps == 5
    assert apply_command("/adaptive 0.7", s, out) and s.halt_threshold == 0.7
    assert apply_command("/adaptive off", s, out) and s.halt_threshold is None
    assert apply_command("/spec on", s, out) and s.speculative
    assert apply_command("/temp x", s, out) and "bad value" in out.getvalue()
    assert apply_command("/quit", s, out) is False


def test_reply_streams_the_generated_text(micro_config, small_tokenizer):
    from looplm.generate import GenerationConfig, generate

    torch.manual_seed(0)
    m = RecursiveCausalLM(micro_config).eval()
    for spec in (False, True):
        out = io.StringIO()
        stats = reply(m, small_tokenizer, "What is 12 + 30?", ChatSettings(max_new_tokens=8, speculative=spec), out)
        ids = small_tokenizer.encode(small_tokenizer.chat_prompt("What is 12 + 30?"))
        ref = generate(m, [ids], GenerationConfig(max_new_tokens=8, stop_tokens=(small_tokenizer.eos_id,)))
        text = small_tokenizer.decode([t for t in ref.tokens[0] if t != small_tokenizer.eos_id])
        assert out.getvalue().startswith(text) and "tokens/s" in out.getvalue()
        assert stats["tokens"] == len(ref.tokens[0]) and stats["mean_exit_step"] == micro_config.recurrence


def test_scripted_session(tmp_path, micro_config, small_tokenizer, monkeypatch, capsys):
    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / "ck", RecursiveCausalLM(micro_config), small_tokenizer)
    lines = iter(["Hello", "/steps 2", "Hi again", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "--ckpt", str(ck), "--max-new-tokens", "4"]) == 0
    text = capsys.readouterr().out
    assert text.count("tokens/s") == 2 and "of 2]" in text
