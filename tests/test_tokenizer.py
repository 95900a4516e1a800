"""Tests for looplm.tokenizer: lossless round trip, single-id specials, digit splitting, chat mask,
save/load, sha256, and loading through transformers.PreTrainedTokenizerFast."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from looplm.tokenizer import SPECIAL_TOKENS, Tokenizer, TokenizerError

CORPUS = [
    "What is 95 * 98? 95 * 98 = 9310",
    "Algorithm: DFS\nQuestion: Graph: A-[B,C], B-[D], C-[], D-[C]. Start: A\n"
    "Trace: <search> A <search> B <search> D <search> C <backtrack> D <backtrack> B <backtrack> A\n"
    "Answer: Path is [A, B, D, C]",
    "dfs:\nA: [[1 1 0 1], [1 1 0 0], [0 0 0 0], [1 0 1 1]], initial_trace: [0 1 2 3]\ntrace | pi:\n"
    "[0 1 2 3], [0 0 2 3] | [0 0 3 0]\n\n",
    "The quick brown fox jumps over the lazy dog. Héllo wörld, ça va? 日本語のテキスト 😀",
] * 50


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(CORPUS, vocab_size=400)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_round_trip_any_text(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.text(max_size=20), st.sampled_from(SPECIAL_TOKENS)), max_size=8))
def test_round_trip_with_literal_specials(tok: Tokenizer, parts: list[str]) -> None:
    text = "".join(parts)
    assert tok.decode(tok.encode(text)) == text


def test_specials_are_single_tokens(tok: Tokenizer) -> None:
    ids = [tok.token_to_id(s) for s in SPECIAL_TOKENS]
    assert ids == list(range(len(SPECIAL_TOKENS)))
    for s, i in zip(SPECIAL_TOKENS, ids):
        assert tok.encode(s) == [i]
        assert tok.encode(f"x{s}y")[1] == i
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == tuple(ids[:3])


def test_skip_special_keeps_search_tokens(tok: Tokenizer) -> None:
    ids = tok.encode("<|user|>go <search> A <backtrack> B<|eos|>")
    assert tok.decode(ids, skip_special=True) == "go <search> A <backtrack> B"


def test_digits_split_one_per_token(tok: Tokenizer) -> None:
    ids = tok.encode("12345 + 9310 = 21655")
    pieces = [tok.decode([i]) for i in ids]
    digit_pieces = [p for p in pieces if any(c.isdigit() for c in p)]
    assert digit_pieces == list("12345931021655")  # every digit alone, never merged with anything


def test_add_bos_eos(tok: Tokenizer) -> None:
    ids = tok.encode("hi", add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and ids[1:-1] == tok.encode("hi")
    assert tok.encode_batch(["hi", "x 1"]) == [tok.encode("hi"), tok.encode("x 1")]


def test_chat_mask_covers_response_and_eos(tok: Tokenizer) -> None:
    prompt, response = "What is 2 + 3?", "2 + 3 = 5\n#### 5"
    ids, mask = tok.encode_chat(prompt, response)
    assert len(ids) == len(mask)
    n_prompt = len(tok.encode(tok.chat_prompt(prompt)))
    assert mask == [0] * n_prompt + [1] * (len(ids) - n_prompt)
    assert ids[-1] == tok.eos_id
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == response + "<|eos|>"
    assert tok.decode([i for i, m in zip(ids, mask) if not m]) == "<|user|>\nWhat is 2 + 3?\n<|assistant|>\n"
    assert tok.chat_prompt("p") == "<|user|>\np\n<|assistant|>\n"


def test_save_load_sha(tok: Tokenizer, tmp_path) -> None:
    path = tok.save(tmp_path / "t")
    assert path.name == "tokenizer.json"
    back = Tokenizer.load(tmp_path / "t")
    assert back.sha256() == tok.sha256() and back.vocab_size == tok.vocab_size
    assert back.encode(CORPUS[1]) == tok.encode(CORPUS[1])
    assert Tokenizer.load(path).sha256() == tok.sha256()
    other = Tokenizer.train(CORPUS[:4] * 10 + ["zebra zebra zebra"] * 20, vocab_size=400)
    assert other.sha256() != tok.sha256()


def test_training_is_deterministic(tok: Tokenizer) -> None:
    assert Tokenizer.train(CORPUS, vocab_size=400).sha256() == tok.sha256()


def test_vocab_may_be_smaller_than_asked() -> None:
    t = Tokenizer.train(["ab ab ab"] * 10, vocab_size=5000)
    assert 264 <= t.vocab_size < 5000


def test_bad_inputs(tmp_path) -> None:
    with pytest.raises(TokenizerError, match="vocab_size"):
        Tokenizer.train(CORPUS, vocab_size=100)
    with pytest.raises(TokenizerError, match="no tokenizer file"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot read"):
        Tokenizer.load(tmp_path)


def test_missing_specials_rejected(tok: Tokenizer, tmp_path) -> None:
    d = json.loads(tok.hf.to_str())
    d["added_tokens"] = [t for t in d["added_tokens"] if t["content"] != "<|pad|>"]
    del d["model"]["vocab"]["<|pad|>"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(d))
    with pytest.raises(TokenizerError, match="<\\|pad\\|>"):
        Tokenizer.load(tmp_path)


def test_transformers_fast_tokenizer_loads_it(tok: Tokenizer, tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    path = tok.save(tmp_path)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<|bos|>",
                                                eos_token="<|eos|>", pad_token="<|pad|>")
    for text in CORPUS[:4]:
        assert fast.encode(text, add_special_tokens=False) == tok.encode(text)
        assert fast.decode(tok.encode(text)) == text
    assert fast.pad_token_id == tok.pad_id and fast.eos_token_id == tok.eos_id
    assert len(fast) == tok.vocab_size
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))  # via tokenizer_config.json
    assert auto.eos_token_id == tok.eos_id and auto.pad_token_id == tok.pad_id
    msgs = [{"role": "user", "content": "What is 2 + 3?"}]
    assert auto.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == tok.chat_prompt(msgs[0]["content"])
    full = msgs + [{"role": "assistant", "content": "5"}]
    ids = auto.apply_chat_template(full, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert list(ids) == tok.encode_chat("What is 2 + 3?", "5")[0]


def test_train_default_tokenizer_fast_and_covers_domains() -> None:
    tasks = pytest.importorskip("looplm.tasks")
    try:
        for name in tasks.GENERATED_TASKS:
            tasks.get_task(name)
    except ImportError as e:
        pytest.skip(f"generated tasks not available yet: {e}")
    import time

    from looplm.tokenizer import train_default_tokenizer

    t0 = time.perf_counter()
    t = train_default_tokenizer(vocab_size=2048, seed=0)
    elapsed = time.perf_counter() - t0
    assert elapsed < 30, f"default tokenizer took {elapsed:.1f}s"
    assert 300 < t.vocab_size <= 2048
    assert train_default_tokenizer(vocab_size=2048, seed=0).sha256() == t.sha256()
    text = "Trace: <search> A <backtrack> B | [0 0 3 0] What is 95 * 98?"
    assert t.decode(t.encode(text)) == text


def test_a_graph_node_is_one_id_everywhere() -> None:
    """`B` in `A-[B,C]`, in `<search> B`, in `<backtrack> B` and in `Path is [A, B]` is the same id, for
    every node label, with the default tokenizer (whitespace is never merged into a word)."""
    from looplm.tasks import get_task
    from looplm.tokenizer import train_default_tokenizer

    tok = train_default_tokenizer()
    for ex in get_task("dfs_verbal").generate(20, seed=3, min_nodes=8, max_nodes=10):
        text = tok.chat_prompt(ex.prompt) + ex.answer
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        nodes = set(ex.meta["graph"])
        seen: dict[str, set[int]] = {}
        for i in ids:
            piece = tok.decode([i])
            letters = [c for c in piece if c.isupper() and len(piece.strip()) == 1]
            if letters and letters[0] in nodes:
                seen.setdefault(letters[0], set()).add(i)
        for node in nodes:
            ids_of_node = {i for i in ids if tok.decode([i]) == node}
            assert ids_of_node, f"node {node} never appears as a token of its own"
            assert seen[node] == ids_of_node == {tok.token_to_id(node)}, (node, seen[node])
        # and no token glues a node letter to anything else (a space, a bracket, a comma)
        assert not [tok.decode([i]) for i in ids if any(c in nodes for c in tok.decode([i]))
                    and tok.decode([i]) not in nodes and tok.decode([i]).strip() in nodes]


def test_whitespace_is_its_own_token(tok: Tokenizer) -> None:
    pieces = [tok.decode([i]) for i in tok.encode("Path is [A, B]\nTrace: <search> A")]
    assert all(p == p.strip() or p.isspace() and len(p) == 1 for p in pieces), pieces


# ----------------------------------------------------------------------------- multi-turn chat template

_content = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
_turns = st.lists(st.tuples(_content, _content), min_size=1, max_size=4)


def _conversation(system: str | None, turns: list[tuple[str, str]]) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system is not None else []
    for u, a in turns:
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    return msgs


def _naive_text(msgs: list[dict]) -> str:
    """The template written out by hand, one f-string per role."""
    tags = {"system": "<|system|>\n{}\n", "user": "<|user|>\n{}\n", "assistant": "<|assistant|>\n{}<|eos|>"}
    return "".join(tags[m["role"]].format(m["content"]) for m in msgs)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.none(), _content), _turns)
def test_encode_messages_is_the_joint_encoding_with_assistant_mask(tok: Tokenizer, system, turns) -> None:
    msgs = _conversation(system, turns)
    ids, mask = tok.encode_messages(msgs)
    assert tok.chat_text(msgs) == _naive_text(msgs)
    assert ids == tok.encode(_naive_text(msgs))  # piecewise encoding == encoding the whole text
    learned = [t for t, m in zip(ids, mask) if m]
    assert tok.decode(learned) == "".join(a + "<|eos|>" for _, a in turns)  # exactly the assistant spans
    assert sum(t == tok.eos_id for t in learned) == len(turns)


def test_single_turn_format_is_unchanged(tok: Tokenizer) -> None:
    msgs = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]
    assert tok.chat_text(msgs) == "<|user|>\nWhat is 2 + 3?\n<|assistant|>\n5<|eos|>"
    assert tok.encode_messages(msgs) == tok.encode_chat("What is 2 + 3?", "5")
    assert tok.chat_text(msgs[:1], add_generation_prompt=True) == tok.chat_prompt("What is 2 + 3?")
    assert tok.encode_messages(msgs[:1], add_generation_prompt=True)[0] == tok.encode(tok.chat_prompt("What is 2 + 3?"))


def test_unsupported_roles_raise(tok: Tokenizer) -> None:
    from looplm.tokenizer import ChatTemplateError

    with pytest.raises(ChatTemplateError, match="unsupported role 'tool'"):
        tok.encode_messages([{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}])
    with pytest.raises(ChatTemplateError, match="system message must be the first"):
        tok.chat_text([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}])
    with pytest.raises(ChatTemplateError, match="message 0"):
        tok.chat_text([{"role": "user", "content": 3}])


def test_hf_template_assistant_mask_and_errors(tok: Tokenizer, tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    tok.save(tmp_path)
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    msgs = _conversation("Be brief.", [("What is 2 + 3?", "5"), ("And 4 + 4?", "It is 8.")])
    assert auto.apply_chat_template(msgs, tokenize=False) == tok.chat_text(msgs)
    out = auto.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = tok.encode_messages(msgs)
    assert list(out["input_ids"]) == ids
    assert list(out["assistant_masks"]) == mask and sum(mask) == len(tok.encode("5")) + len(tok.encode("It is 8.")) + 2
    for bad, why in (([{"role": "tool", "content": "x"}], "unsupported role tool"),
                     ([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}], "first message")):
        with pytest.raises(Exception, match=why):
            auto.apply_chat_template(bad, tokenize=False)
