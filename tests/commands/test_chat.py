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


def _record_prompts(monkeypatch):
    """Wrap `looplm.generate.generate` so the test sees every prompt the chat feeds the model."""
    import looplm.generate

    prompts, replies, real = [], [], looplm.generate.generate

    def spy(model, ids, cfg, **kw):
        prompts.append(list(ids[0]))
        out = real(model, ids, cfg, **kw)
        replies.append(list(out.tokens[0]))
        return out
    monkeypatch.setattr(looplm.generate, "generate", spy)
    return prompts, replies


def _closed(tok, reply):
    return reply if reply and reply[-1] == tok.eos_id else reply + [tok.eos_id]


def test_multi_turn_history_from_scripted_stdin(tmp_path, micro_config, small_tokenizer, monkeypatch, capsys):
    """Each turn's prompt is the exact history (system, earlier turns and replies) plus the new user
    turn; past max_seq_len the oldest turns go first, and the chat says so; /reset forgets."""
    tok = small_tokenizer
    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / "ck", RecursiveCausalLM(micro_config), tok)
    prompts, replies = _record_prompts(monkeypatch)
    users = ["Hello there", "What is 12?", "The capital?", "Paris it is"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(users[:3] + ["/reset", users[3]]) + "\n"))
    assert main(["chat", "--ckpt", str(ck), "--max-new-tokens", "4", "--system", "Be brief."]) == 0
    out = capsys.readouterr().out
    assert len(prompts) == 4 and out.count("tokens/s") == 4

    def user_turn(text):
        return tok.encode_messages([{"role": "user", "content": text}], add_generation_prompt=True)[0]

    system = tok.encode_messages([{"role": "system", "content": "Be brief."}])[0]
    assert tok.decode(system) == "<|system|>\nBe brief.\n"
    turns = [user_turn(u) + _closed(tok, r) for u, r in zip(users, replies)]
    assert prompts[0] == system + user_turn(users[0])
    assert prompts[1] == system + turns[0] + user_turn(users[1])  # the whole history, byte-exact template
    limit = micro_config.max_seq_len - 4  # room for a full reply of --max-new-tokens
    kept = [t for t in turns[:2]]
    while kept and len(system) + sum(map(len, kept)) + len(user_turn(users[2])) > limit:
        kept.pop(0)
    assert len(kept) < 2, "the fixture must overflow the context on the third turn"
    assert prompts[2] == system + [t for turn in kept for t in turn] + user_turn(users[2])
    assert len(prompts[2]) <= limit
    assert f"[dropped the oldest {2 - len(kept)} turn(s)" in out and "max_seq_len = 64" in out
    assert "[conversation reset]" in out and prompts[3] == system + user_turn(users[3])


def test_history_prompt_drops_oldest_first(small_tokenizer):
    from looplm.commands.chat import Conversation, history_prompt

    conv = Conversation(system=[1, 2], turns=[[3] * 10, [4] * 10, [5] * 10])
    ids, turn, dropped = history_prompt(small_tokenizer, conv, "hi", limit=2 + 20 + 8)
    assert dropped == 1 and conv.turns == [[4] * 10, [5] * 10] and ids[:2] == [1, 2] and ids[2:22] == [4] * 10 + [5] * 10
    assert ids[22:] == turn and len(turn) <= 8
    ids, _, dropped = history_prompt(small_tokenizer, conv, "hi", limit=3)  # nothing fits: every turn goes
    assert dropped == 2 and conv.turns == [] and ids == [1, 2] + turn
