"""Byte-level BPE tokenizer (Hugging Face `tokenizers`), the chat template and the chat loss mask.

- Pre-tokenisation: every whitespace character is its own pre-token, then `Digits(individual_digits=True)`,
  then `ByteLevel(add_prefix_space=False)`. So a word never carries a leading space: a graph node is one
  id wherever it appears (`B` in `A-[B,C]`, in `<search> B` and in `Path is [A, B]`; with GPT-2-style
  pre-tokens it was `B` in one place and `ĠB` in another, two ids the model had to learn are one
  node), every digit is its own token (arithmetic reads one digit per token), and any UTF-8 text
  round-trips exactly: `decode(encode(s)) == s`. No normaliser (no Unicode or whitespace rewriting).
  The cost: a space is a token of its own (about 1.3x the tokens of English or a DFS trace).
- Special tokens (ids 0..7 in this order): `<|bos|>`, `<|eos|>`, `<|pad|>`, `<|system|>`, `<|user|>`,
  `<|assistant|>`, `<search>`, `<backtrack>`. The last two are ordinary "added" tokens (single ids,
  kept by `decode(skip_special=True)`, since they are part of verbal DFS traces); the first six are
  special (dropped by `decode(skip_special=True)`).
- Literal special-token strings in input text (e.g. a document containing "<|eos|>") are encoded as
  the special token's single id, like every HF tokenizer; the text still round-trips through
  `decode(..., skip_special=False)`. Builders that must not see them can check `has_special_text`.
- Chat template, per message: system `"<|system|>\\n{content}\\n"` (first message only), user
  `"<|user|>\\n{content}\\n"`, assistant `"<|assistant|>\\n{content}<|eos|>"`; a generation prompt is
  `"<|assistant|>\\n"`. One user turn and its response is the report's format, byte for byte:
  `"<|user|>\\n{prompt}\\n<|assistant|>\\n{response}<|eos|>"`. Any other role raises
  `ChatTemplateError`. The pieces are encoded separately (exactly what generation sees: the prompt
  is encoded alone, then the model emits response tokens), so the loss mask is 1 exactly on the
  assistant contents and their EOS; the HF template marks the same span with `{% generation %}`.
- Saved as one `tokenizer.json`, loadable by `transformers.PreTrainedTokenizerFast(tokenizer_file=)`.

Simplifications: no BOS is added unless asked (pre-training documents are joined by EOS); no tool
or other roles in the template; `train_default_tokenizer` trains on generated task text plus a small built-in
English sample, not on a real corpus.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as _HFTokenizer

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SYSTEM, USER, ASSISTANT = "<|system|>", "<|user|>", "<|assistant|>"
SEARCH, BACKTRACK = "<search>", "<backtrack>"
SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, PAD, SYSTEM, USER, ASSISTANT, SEARCH, BACKTRACK)
NON_SPECIAL_ADDED: frozenset[str] = frozenset({SEARCH, BACKTRACK})  # single ids, kept when decoding
TOKENIZER_FILE = "tokenizer.json"


HF_CONFIG_FILE = "tokenizer_config.json"
CHAT_ROLES = ("system", "user", "assistant")
# Jinja chat template for transformers' apply_chat_template: the same text as `chat_text` /
# `encode_messages`. `{% generation %}` marks what SFT learns (assistant content and its EOS), so
# `return_assistant_tokens_mask=True` gives the same mask as `encode_messages`. An unsupported role,
# or a system message after the first, raises (nothing is dropped).
HF_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' and loop.first %}<|system|>\n{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}<|user|>\n{{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}<|assistant|>\n{% generation %}{{ m['content'] }}<|eos|>{% endgeneration %}"
    "{% elif m['role'] == 'system' %}{{ raise_exception('looplm chat template: a system message must be the "
    "first message') }}"
    "{% else %}{{ raise_exception('looplm chat template: unsupported role ' ~ m['role'] ~ '; the roles are system "
    "(first message only), user and assistant') }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def hf_tokenizer_config() -> dict:
    """What `tokenizer_config.json` holds (read by `transformers.AutoTokenizer`)."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS,
            "pad_token": PAD, "add_bos_token": False, "add_eos_token": False,
            "clean_up_tokenization_spaces": False, "chat_template": HF_CHAT_TEMPLATE}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


class TokenizerError(ValueError):
    """A tokenizer file is missing, unreadable or lacks the looplm special tokens."""


class ChatTemplateError(ValueError):
    """A conversation the chat template cannot write (an unsupported role, a misplaced system message)."""


_ROLE_TAGS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}


def chat_segments(messages: list[dict], add_generation_prompt: bool = False) -> list[tuple[str, bool]]:
    """The chat template as (text, learned) pieces whose concatenation is the conversation's text;
    `learned` marks each assistant turn's content and EOS (what SFT scores)."""
    out: list[tuple[str, bool]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise ChatTemplateError(f"message {i}: expected {{'role': ..., 'content': str}}, got {m!r}"[:200])
        role = m.get("role")
        if role not in _ROLE_TAGS:
            raise ChatTemplateError(f"message {i}: unsupported role {role!r}; looplm's chat template has the roles "
                                    f"system (first message only), user and assistant")
        if role == "system" and i:
            raise ChatTemplateError(f"message {i}: a system message must be the first message")
        if role == "assistant":
            out += [(f"{ASSISTANT}\n", False), (m["content"] + EOS, True)]
        else:
            out.append((f"{_ROLE_TAGS[role]}\n{m['content']}\n", False))
    if add_generation_prompt:
        out.append((f"{ASSISTANT}\n", False))
    return out


def _added(content: str) -> AddedToken:
    return AddedToken(content, special=content not in NON_SPECIAL_ADDED, normalized=False,
                      lstrip=False, rstrip=False, single_word=False)


def _empty_bpe() -> _HFTokenizer:
    tok = _HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s"), "isolated"),  # every whitespace char alone: one id per word/node
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def _mark_search_tokens_non_special(tok: _HFTokenizer) -> _HFTokenizer:
    """The trainer registers every listed token as special; flip `<search>`/`<backtrack>` back."""
    d = json.loads(tok.to_str())
    for t in d["added_tokens"]:
        if t["content"] in NON_SPECIAL_ADDED:
            t["special"] = False
    return _HFTokenizer.from_str(json.dumps(d))


class Tokenizer:
    """looplm's tokenizer: a thin wrapper over a `tokenizers.Tokenizer` with the chat template."""

    def __init__(self, hf: _HFTokenizer):
        self._tok = hf
        missing = [s for s in SPECIAL_TOKENS if hf.token_to_id(s) is None]
        if missing:
            raise TokenizerError(f"tokenizer lacks the looplm special token(s) {missing}")
        self.bos_id: int = hf.token_to_id(BOS)
        self.eos_id: int = hf.token_to_id(EOS)
        self.pad_id: int = hf.token_to_id(PAD)

    # ---------------------------------------------------------------- construction / IO
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> "Tokenizer":
        """Train a byte-level BPE on `texts`. The result may have fewer than `vocab_size` tokens when
        the text has too few distinct merges; `.vocab_size` reports the true size."""
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise TokenizerError(f"vocab_size must be an int, got {vocab_size!r}")
        floor = 256 + len(SPECIAL_TOKENS)
        if vocab_size < floor:
            raise TokenizerError(f"vocab_size must be >= {floor} (256 bytes + specials), got {vocab_size}")
        tok = _empty_bpe()
        specials = [_added(s) for s in SPECIAL_TOKENS]
        tok.add_special_tokens(specials)  # isolate specials in the training text
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
        return cls(_mark_search_tokens_non_special(tok))

    @classmethod
    def load(cls, path_or_dir: str | Path) -> "Tokenizer":
        """Load `dir/tokenizer.json` or a `tokenizer.json` path."""
        p = Path(path_or_dir)
        if p.is_dir():
            p = p / TOKENIZER_FILE
        if not p.is_file():
            raise TokenizerError(f"no tokenizer file at {p} (expected a directory holding {TOKENIZER_FILE} "
                                 f"or the file itself)")
        try:
            hf = _HFTokenizer.from_file(str(p))
        except Exception as e:  # noqa: BLE001 - the Rust error types vary
            raise TokenizerError(f"{p}: cannot read tokenizer: {e}") from e
        return cls(hf)

    def save(self, dir: str | Path) -> Path:
        """Write `dir/tokenizer.json` and return its path; also `dir/tokenizer_config.json` (special
        tokens and the chat template) so `transformers.AutoTokenizer.from_pretrained(dir)` works."""
        d = Path(dir)
        d.mkdir(parents=True, exist_ok=True)
        path = d / TOKENIZER_FILE
        _write_atomic(path, self._tok.to_str(pretty=True))
        _write_atomic(d / HF_CONFIG_FILE, json.dumps(hf_tokenizer_config(), indent=2))
        return path

    def sha256(self) -> str:
        """sha256 of the canonical JSON (sorted keys, no whitespace): equal iff the tokenizers are."""
        canon = json.dumps(json.loads(self._tok.to_str()), sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
        return hashlib.sha256(canon.encode("utf-8")).hexdigest()

    # ---------------------------------------------------------------- encode / decode
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def hf(self) -> _HFTokenizer:
        """The underlying `tokenizers.Tokenizer`."""
        return self._tok

    def token_to_id(self, s: str) -> int | None:
        return self._tok.token_to_id(s)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def has_special_text(self, text: str) -> bool:
        """True if `text` literally contains a special-token string (it would encode to that id)."""
        return any(s in text for s in SPECIAL_TOKENS)

    # ---------------------------------------------------------------- chat
    def chat_prompt(self, prompt: str) -> str:
        """The chat template of one user turn up to and including the assistant tag (what generation
        is fed)."""
        return f"{USER}\n{prompt}\n{ASSISTANT}\n"

    def chat_text(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The chat template's text of a conversation (as `HF_CHAT_TEMPLATE` renders it)."""
        return "".join(t for t, _ in chat_segments(messages, add_generation_prompt))

    def encode_messages(self, messages: list[dict], add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
        """(ids, mask) of a conversation: mask 1 exactly on each assistant turn's content tokens and
        its EOS. Each piece is encoded on its own; the pieces meet at a newline or a special token,
        both token boundaries, so the ids equal `encode(chat_text(messages))`."""
        ids: list[int] = []
        mask: list[int] = []
        for text, learned in chat_segments(messages, add_generation_prompt):
            piece = self.encode(text)
            ids += piece
            mask += [int(learned)] * len(piece)
        return ids, mask

    def encode_chat(self, prompt: str, response: str) -> tuple[list[int], list[int]]:
        """(ids, mask) of one user prompt and one response: prompt part masked 0, response tokens
        and the final EOS masked 1."""
        return self.encode_messages([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}])

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, sha256={self.sha256()[:12]})"


# -------------------------------------------------------------------- default training corpus

_ENGLISH = (
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single "
    "step. Science is the systematic study of the structure and behaviour of the physical and natural "
    "world through observation and experiment. The river flows from the mountains to the sea, and the "
    "town grew along its banks during the nineteenth century. Please write a short summary of the "
    "following article. Explain why the sky is blue in simple terms. Give three tips for staying "
    "healthy: eat a balanced diet, exercise regularly and get enough sleep. He said that they would "
    "arrive in the morning, but the train was late and nobody knew when it would come. Language "
    "models predict the next word from the words that came before it. What is the capital of France? "
    "The capital of France is Paris. She bought apples, oranges and bananas at the market, then she "
    "walked home through the park where children were playing football."
).split(". ")


def default_corpus(n_texts: int = 2000, seed: int = 0) -> Iterator[str]:
    """Generated text from every generated task (CLRS DFS, verbal DFS, arithmetic, word problems),
    `n_texts / 4` examples each (prompt + answer), then `n_texts / 10` short English passages."""
    from looplm.tasks import GENERATED_TASKS, get_task  # lazy: tasks are not needed to load a tokenizer

    per_task = max(1, n_texts // len(GENERATED_TASKS))
    for i, name in enumerate(GENERATED_TASKS):
        for ex in get_task(name).generate(per_task, seed=seed * 1009 + i):
            yield ex.prompt + ("" if ex.prompt.endswith("\n") else "\n") + ex.answer  # as in pre-training
    rng = random.Random(seed)
    for _ in range(max(1, n_texts // 10)):
        yield ". ".join(rng.sample(_ENGLISH, k=4)) + "."


def train_default_tokenizer(vocab_size: int = 2048, seed: int = 0, n_texts: int = 2000,
                            extra_texts: Iterable[str] = ()) -> Tokenizer:
    """A BPE trained on `default_corpus(n_texts, seed)` plus `extra_texts` (e.g. WikiText lines, for
    better English compression); deterministic for its arguments."""
    return Tokenizer.train(itertools.chain(default_corpus(n_texts, seed), extra_texts), vocab_size)
