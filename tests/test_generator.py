"""The batched step generator must produce exactly what independent ``generate`` calls do."""

import pytest
import torch

from reasoning_viz.models.generator import SamplingParams, StepGenerator


@pytest.fixture(scope="module")
def gen(tiny_models) -> StepGenerator:
    return tiny_models.generator


def reference(gen: StepGenerator, prefix: list[int], n: int) -> list[int]:
    out = gen.model.generate(torch.tensor([prefix]), attention_mask=torch.ones(1, len(prefix), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, pad_token_id=gen.tokenizer.pad_token_id,
                             eos_token_id=None)
    return out[0, len(prefix):].tolist()


def prefixes(gen: StepGenerator) -> list[list[int]]:
    a = gen.prompt_ids("Mia has 12 apples. She buys 5 more apples. How many apples does Mia have now?")
    b = gen.prompt_ids("A tank holds 40 liters of water. 9 liters leak out. How many liters are in the tank now?")
    return [a, a + [12, 40, 7], b, a + [3]]  # shared prefixes, different lengths, a different prompt


@pytest.mark.parametrize("budget_mb", [1024.0, 0.02])  # the tiny budget forces one-node chunks
def test_greedy_matches_independent_generate_calls(gen, budget_mb):
    gen.memory_budget_bytes = budget_mb * 2**20
    try:
        params = SamplingParams(temperature=0.0, max_step_tokens=12, ignore_eos=True)
        out = gen.expand(prefixes(gen), 3, params)
    finally:
        gen.memory_budget_bytes = 1024.0 * 2**20
    for p, children in zip(prefixes(gen), out):
        ref = reference(gen, p, 12)
        assert len(children) == 3
        for child in children:
            assert child.token_ids == ref


def test_sampling_is_seeded(gen):
    params = SamplingParams(temperature=1.0, max_step_tokens=8)
    a = gen.expand(prefixes(gen), 2, params, generator=torch.Generator().manual_seed(7))
    b = gen.expand(prefixes(gen), 2, params, generator=torch.Generator().manual_seed(7))
    c = gen.expand(prefixes(gen), 2, params, generator=torch.Generator().manual_seed(8))
    ids = lambda out: [c.token_ids for node in out for c in node]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)


def test_stops_at_the_step_delimiter_and_records_statistics(gen):
    tok = gen.tokenizer
    delim = tok.encode("\n\n", add_special_tokens=False)
    assert len(delim) == 1, "the bundled tokenizer has one token for a blank line"
    bias = torch.zeros(len(tok))
    bias[delim[0]] = 100.0  # make the blank line overwhelmingly likely after the first token
    head = gen.model.lm_head
    original = head.forward
    head.forward = lambda x: original(x) + bias
    try:
        out = gen.expand([prefixes(gen)[0]], 2, SamplingParams(temperature=1.0, max_step_tokens=10),
                         generator=torch.Generator().manual_seed(0), first_tokens=[[17, 18]])
    finally:
        head.forward = original
    for child, first in zip(out[0], (17, 18)):
        assert child.token_ids == [first, delim[0]]  # forced first token, then the delimiter ends the step
        assert child.finish == "step"
        assert len(child.logprobs) == len(child.margins) == 2
        assert all(0.0 <= m <= 1.0 for m in child.margins)


def test_token_cap_and_validation(gen):
    out = gen.expand([prefixes(gen)[0]], 1, SamplingParams(temperature=0.0, max_step_tokens=5, ignore_eos=True))
    assert len(out[0][0].token_ids) == 5 and out[0][0].finish == "length"
    with pytest.raises(ValueError):
        gen.expand([prefixes(gen)[0]], 1, SamplingParams(temperature=-1.0))
    with pytest.raises(ValueError):
        gen.expand([[]], 1, SamplingParams())


def test_encode_steps_matches_running_text(gen):
    """A prefix of finished steps must tokenize as it does inside any longer solution (what the model saw).

    The blank line is left for the model to write: its tokens depend on what follows it (one merged
    token before a digit, two before a letter), so no pre-encoded delimiter fits every next step.
    """
    from reasoning_viz.models.generator import encode_steps

    tok = gen.tokenizer
    steps = ["Buys 5 more: 12 + 5 = 17", "Gives away 3: 17 - 3 = 14"]
    prefix = encode_steps(tok, steps)
    assert tok.decode(prefix) == "\n\n".join(steps)
    for next_step in ("The answer is \\boxed{14}.", "3 more get on: 14 + 3 = 17"):
        full = tok.encode("\n\n".join(steps + [next_step]), add_special_tokens=False)
        assert full[: len(prefix)] == prefix, next_step
    # the two tokenizations of the blank line really differ, which is why it is left out
    assert tok.encode("1\n\nThe", add_special_tokens=False)[1:-1] != tok.encode("1\n\n2", add_special_tokens=False)[1:-1]
