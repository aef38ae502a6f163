"""The in-place KV cache and shared-prefix attention must compute exactly what transformers' own do."""

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers.cache_utils import DynamicLayer

from reasoning_viz.bench import IdTokenizer
from reasoning_viz.models.generator import SamplingParams, StepGenerator
from reasoning_viz.models.kv_cache import AppendLayer, append_cache, cache_keyword
from reasoning_viz.models.shared_prefix import SharedPrefix, enable_shared_prefix, supports_shared_prefix


def tiny(kind: str, vocab: int = 97, **extra):
    torch.manual_seed(0)
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **extra)
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common)).eval()
    return LlamaForCausalLM(LlamaConfig(**common)).eval()


def test_append_layer_matches_dynamic_layer():
    g = torch.Generator().manual_seed(0)
    kv = lambda b, n: (torch.randn(b, 2, n, 8, generator=g), torch.randn(b, 2, n, 8, generator=g))  # noqa: E731
    plain, appended = DynamicLayer(), AppendLayer(reserve=3)
    steps = [("update", kv(1, 5)), ("repeat", 3), ("update", kv(3, 1)), ("update", kv(3, 4)),  # 4 > reserve: grows
             ("select", torch.tensor([0, 2])), ("update", kv(2, 1)), ("crop", -2), ("update", kv(2, 2))]
    for op, arg in steps:
        for layer in (plain, appended):
            if op == "update":
                out = layer.update(*arg)
            elif op == "repeat":
                layer.batch_repeat_interleave(arg)
            elif op == "select":
                layer.batch_select_indices(arg)
            else:
                layer.crop(arg)
        assert torch.equal(plain.keys, appended.keys) and torch.equal(plain.values, appended.values), op
        assert plain.get_seq_length() == appended.get_seq_length()
    assert torch.equal(out[0], plain.keys)
    with pytest.raises(ValueError):
        appended.crop(2)


def test_append_layer_writes_in_place():
    layer = AppendLayer(reserve=8)
    layer.update(torch.zeros(2, 2, 4, 8), torch.zeros(2, 2, 4, 8))
    buffer = layer.keys.untyped_storage().data_ptr()
    for _ in range(8):
        layer.update(torch.ones(2, 2, 1, 8), torch.ones(2, 2, 1, 8))
    assert layer.keys.untyped_storage().data_ptr() == buffer  # no reallocation within the reserve
    assert layer.get_seq_length() == 12 and layer.keys[:, :, 4:].eq(1).all()


@pytest.mark.parametrize("kind,dtype", [("llama", torch.float32), ("qwen2", torch.float32),
                                        ("qwen2", torch.bfloat16)])  # bf16: what GPU presets run in
def test_shared_prefix_attention_gives_the_same_logits(kind, dtype):
    model = tiny(kind).to(dtype)
    assert enable_shared_prefix(model)
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(3, 97, (1, 9), generator=g)
    suffixes = torch.randint(3, 97, (3, 5), generator=g)
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[1, :2] = 0  # row 1 is left-padded by two
    with torch.no_grad():
        full_mask = torch.cat([torch.ones(3, 9, dtype=torch.long), mask], 1)
        pos = (full_mask.cumsum(1) - 1).clamp(min=0)
        want = model(input_ids=torch.cat([prefix.expand(3, -1), suffixes], 1), attention_mask=full_mask,
                     position_ids=pos).logits[:, 9:]
        prefix_cache = DynamicCache(config=model.config)
        model(input_ids=prefix, use_cache=True, **{cache_keyword(model): prefix_cache})
        shared = SharedPrefix([(layer.keys, layer.values) for layer in prefix_cache.layers])
        with shared.active():
            got = model(input_ids=suffixes, attention_mask=mask, position_ids=pos[:, 9:], use_cache=True,
                        **{cache_keyword(model): append_cache(model.config, reserve=0)}).logits
    real = mask.bool()
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2  # logits here are < 0.33; a bf16 step there is 0.002
    assert torch.allclose(got[real].float(), want[real].float(), atol=tolerance)


def test_only_plain_attention_models_are_switched():
    assert supports_shared_prefix(tiny("llama"))
    assert not supports_shared_prefix(tiny("qwen2", use_sliding_window=True, sliding_window=4))
    eager = tiny("llama")
    eager.set_attn_implementation("eager")
    assert not enable_shared_prefix(eager) and eager.config._attn_implementation == "eager"


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("shared", [True, False])
def test_generator_greedy_matches_generate_on_both_paths(kind, shared):
    model = tiny(kind)
    gen = StepGenerator(model, IdTokenizer(97), shared_prefix_attention=shared)
    assert gen._shared_attention is shared
    prompt = list(range(10, 30))
    prefixes = [prompt, prompt + [40, 41, 42], prompt + [50]]
    out = gen.expand(prefixes, 2, SamplingParams(temperature=0.0, max_step_tokens=9, ignore_eos=True))
    single = gen.expand([prompt], 3, SamplingParams(temperature=0.0, max_step_tokens=9, ignore_eos=True))
    for prefix, children in zip(prefixes + [prompt], out + single):
        want = model.generate(torch.tensor([prefix]), attention_mask=torch.ones(1, len(prefix), dtype=torch.long),
                              max_new_tokens=9, do_sample=False, pad_token_id=0, eos_token_id=None)[0, len(prefix):]
        assert all(child.token_ids == want.tolist() for child in children)


def test_memory_budget_counts_a_shared_prefix_once():
    model = tiny("llama")
    prefixes = [list(range(3, 203)) + [i] for i in range(4)]  # a 200-token prompt, one own token each
    budget_mb = 0.2  # about 4 rows of 209 tokens in this model's KV cache
    shared = StepGenerator(model, IdTokenizer(97), memory_budget_mb=budget_mb)._rows_per_chunk(prefixes, 8)
    copied = StepGenerator(model, IdTokenizer(97), memory_budget_mb=budget_mb,
                           shared_prefix_attention=False)._rows_per_chunk(prefixes, 8)
    assert copied == 3 and shared > 16 * copied
