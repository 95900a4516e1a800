"""LoopLMForCausalLM against the looplm model it wraps: logits, loss, generate(), the cache adapter, I/O."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from looplm.checkpoint import load_checkpoint  # noqa: E402
from looplm.generate import GenerationConfig, generate  # noqa: E402
from looplm.hf.cache_looplm import LoopLMCache, grown  # noqa: E402
from looplm.hf.configuration_looplm import MODEL_FIELDS, LoopLMConfig  # noqa: E402
from looplm.hf.modeling_looplm import LoopLMForCausalLM  # noqa: E402
from looplm.model import RecursiveCausalLM  # noqa: E402
from tests.hf.conftest import tiny_config  # noqa: E402

TEXTS = ["What is 12 + 30?", "The capital of France is", "A", "Graph: A-[B,C], B-[D]. Start: A"]


def wrap(model: RecursiveCausalLM, tokenizer, **kw) -> LoopLMForCausalLM:
    cfg = LoopLMConfig.from_model_config(model.config, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id,
                                         bos_token_id=tokenizer.bos_id, **kw)
    hf = LoopLMForCausalLM(cfg)
    hf.model.load_state_dict(model.state_dict())
    return hf.eval()


def left_padded(prompts, pad_id):
    L = max(map(len, prompts))
    ids = torch.full((len(prompts), L), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):] = torch.tensor(p)
        mask[i, L - len(p):] = 1
    return ids, mask


@pytest.fixture(scope="module")
def loaded(ckpt):
    model, tok, _ = load_checkpoint(ckpt)
    return model, tok, wrap(model, tok)


@pytest.mark.parametrize("steps,halt", [(None, None), (5, None), (None, 0.5)])
def test_logits_equal_the_wrapped_model(loaded, steps, halt):
    model, tok, hf = loaded
    ids, mask = left_padded([tok.encode(t) for t in TEXTS], tok.pad_id)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(ids, steps or model.config.recurrence, attention_mask=mask.bool(), position_ids=pos,
                    halt_threshold=halt).logits
        got = hf(ids, attention_mask=mask, steps=steps, halt_threshold=halt, use_cache=False).logits
        last = hf(ids, attention_mask=mask, steps=steps, halt_threshold=halt, logits_to_keep=1).logits
    real = mask.bool()
    assert torch.allclose(got[real], ref[real], atol=1e-5, rtol=0)
    assert last.shape == (len(TEXTS), 1, model.config.vocab_size)
    assert torch.allclose(last[:, 0], ref[:, -1], atol=1e-5, rtol=0)


def test_labels_give_the_shifted_cross_entropy(loaded):
    model, tok, hf = loaded
    ids = torch.tensor([tok.encode(TEXTS[0])[:10], tok.encode(TEXTS[3])[:10]])
    labels = ids.clone()
    labels[0, :4] = -100  # e.g. a prompt without loss
    hf.train()
    out = hf(ids, labels=labels)
    hf.eval()
    logp = out.logits.detach().log_softmax(-1)
    terms = [-logp[b, t - 1, labels[b, t]] for b in range(2) for t in range(1, 10) if labels[b, t] != -100]
    assert out.cache is None  # training: no cache by default
    assert torch.allclose(out.loss.detach(), torch.stack(terms).mean(), atol=1e-5)
    summed = hf(ids, labels=labels, num_items_in_batch=7).loss
    assert torch.allclose(summed.detach(), torch.stack(terms).sum() / 7, atol=1e-5)
    out.loss.backward()
    assert hf.model.embed.weight.grad is not None and hf.model.core.adapter.weight.grad.abs().sum() > 0
    hf.zero_grad(set_to_none=True)


@pytest.mark.parametrize("steps,halt", [(None, None), (5, None), (None, 0.5)])
def test_greedy_generate_equals_looplm_generate(loaded, steps, halt):
    model, tok, hf = loaded
    prompts = [tok.encode(t) for t in TEXTS]
    ref = generate(model, prompts, GenerationConfig(max_new_tokens=12, steps=steps, halt_threshold=halt,
                                                    stop_tokens=(tok.eos_id,), pad_id=tok.pad_id))
    ids, mask = left_padded(prompts, tok.pad_id)
    kw = {k: v for k, v in (("steps", steps), ("halt_threshold", halt)) if v is not None}
    for use_cache in (True, False):
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, use_cache=use_cache, **kw)
        for row, want in zip(out[:, ids.shape[1]:].tolist(), ref.tokens):
            got = row[:row.index(tok.eos_id) + 1] if tok.eos_id in row else row
            assert got == want, f"use_cache={use_cache}"
    alone = hf.generate(torch.tensor([prompts[2]]), max_new_tokens=12, do_sample=False, **kw)[0, len(prompts[2]):]
    want = ref.tokens[2]
    assert alone.tolist()[:len(want)] == want  # one row alone decodes as in the padded batch


def test_beam_search_reorders_the_cache(loaded):
    """Beam search expands and reorders cache rows every step: cached beams equal uncached beams,
    sequence scores included (a row decoded against another row's cache would change them)."""
    model, tok, hf = loaded
    ids, mask = left_padded([tok.encode(t) for t in TEXTS[:2]], tok.pad_id)
    kw = dict(attention_mask=mask, max_new_tokens=8, num_beams=3, num_return_sequences=3, do_sample=False,
              eos_token_id=None, return_dict_in_generate=True, output_scores=True)
    cached, plain = hf.generate(ids, use_cache=True, **kw), hf.generate(ids, use_cache=False, **kw)
    assert cached.sequences.tolist() == plain.sequences.tolist()
    assert torch.allclose(cached.sequences_scores, plain.sequences_scores, atol=1e-5, rtol=0)


def test_cache_grows_past_its_first_allocation(small_tokenizer):
    """120 new tokens: the cache reallocates; every step's logits equal a no-cache forward of the sequence."""
    torch.manual_seed(1)
    model = RecursiveCausalLM(tiny_config("per_step", max_seq_len=200)).eval()
    hf = wrap(model, small_tokenizer)
    prompt = small_tokenizer.encode(TEXTS[3])
    ref = generate(model, [prompt], GenerationConfig(max_new_tokens=120))
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=120, min_new_tokens=120, do_sample=False,
                      return_dict_in_generate=True, output_logits=True)
    assert out.sequences[0, len(prompt):].tolist() == ref.tokens[0]
    assert isinstance(out.cache, LoopLMCache) and out.cache.inner.max_len > len(prompt) + 64
    with torch.no_grad():
        full = model(out.sequences[:, :-1], model.config.recurrence).logits[0, len(prompt) - 1:]
    assert torch.allclose(torch.cat(out.logits), full, atol=1e-4, rtol=0)


@pytest.mark.parametrize("core_kv", ["anchored", "per_step"])
def test_grown_cache_continues_like_a_preallocated_one(core_kv, small_tokenizer):
    torch.manual_seed(2)
    model = RecursiveCausalLM(tiny_config(core_kv)).eval()
    ids, mask = left_padded([small_tokenizer.encode(t) for t in TEXTS[:3]], small_tokenizer.pad_id)
    mask = mask.bool()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    small, big = model.new_cache(3, ids.shape[1], 4), model.new_cache(3, 60, 4)
    with torch.no_grad():
        for c in (small, big):
            model(ids, 4, cache=c, attention_mask=mask, position_ids=pos)
        small = grown(small, 60)
        nxt = torch.tensor([[5], [6], [7]])
        for k in range(3):
            a = model(nxt, 4, cache=small, position_ids=pos[:, -1:] + 1 + k).logits
            b = model(nxt, 4, cache=big, position_ids=pos[:, -1:] + 1 + k).logits
            assert torch.equal(a, b)
    assert small.max_len == 60 and small.pos == big.pos


def test_crop_rolls_the_cache_back(loaded):
    model, tok, hf = loaded
    ids = torch.tensor([tok.encode(TEXTS[3])[:12]])
    with torch.no_grad():
        full = hf(ids)  # a cache holding 12 tokens
        full.cache.crop(-3)
        assert full.cache.get_seq_length() == 9
        again = hf(ids[:, 9:], cache=full.cache).logits
        ref = hf(ids, use_cache=False).logits[:, 9:]
    assert torch.allclose(again, ref, atol=1e-5, rtol=0)


def test_save_pretrained_round_trip(loaded, tmp_path):
    model, tok, hf = loaded
    hf.save_pretrained(tmp_path)
    back = LoopLMForCausalLM.from_pretrained(tmp_path).eval()
    assert back.config.to_model_config() == model.config
    ref_state, got_state = hf.state_dict(), back.state_dict()
    assert set(ref_state) == set(got_state) and all(torch.equal(ref_state[k], got_state[k]) for k in ref_state)
    assert back.model.lm_head.weight is back.model.embed.weight  # still tied
    for (name, a), (_, b) in zip(hf.named_buffers(), back.named_buffers()):  # RoPE angles, norm floors
        assert torch.equal(a, b), name
    ids = torch.tensor([tok.encode(TEXTS[0])])
    with torch.no_grad():
        assert torch.equal(back(ids).logits, hf(ids).logits)


def test_a_weight_missing_from_the_file_is_an_error(loaded, tmp_path):
    from safetensors.torch import load_file, save_file

    _, _, hf = loaded
    hf.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["model.core.halt.bias"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"weights missing from the checkpoint: model\.core\.halt\.bias"):
        LoopLMForCausalLM.from_pretrained(tmp_path)


def test_config_holds_every_model_field_and_validates():
    cfg = tiny_config("per_step")
    hc = LoopLMConfig.from_model_config(cfg, halt_threshold=0.7)
    d = hc.to_dict()
    assert all(d[name] == getattr(cfg, name) for name in MODEL_FIELDS)
    assert d["model_type"] == "looplm" and d["halt_threshold"] == 0.7
    assert hc.hidden_size == cfg.d_model and hc.max_position_embeddings == cfg.max_seq_len
    with pytest.raises(ValueError, match="n_kv_heads"):
        LoopLMConfig(**{**cfg.to_dict(), "n_heads": 3, "n_kv_heads": 2})
    with pytest.raises(ValueError, match="halt_threshold"):
        LoopLMConfig(halt_threshold=1.5)
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        LoopLMConfig(tie_word_embeddings=False)


def test_forward_refuses_what_it_does_not_support(loaded):
    _, tok, hf = loaded
    ids = torch.tensor([tok.encode(TEXTS[0])])
    with pytest.raises(ValueError, match="inputs_embeds"):
        hf(inputs_embeds=torch.zeros(1, 3, hf.config.d_model))
    with pytest.raises(ValueError, match="attention_mask of shape"):
        hf(ids, attention_mask=torch.ones(1, ids.shape[1] + 2))
    with pytest.raises(TypeError, match="unexpected argument"):
        hf(ids, frobnicate=1)
    with pytest.raises(ValueError, match="max_steps"):
        hf(ids, steps=99)
