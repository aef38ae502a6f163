"""The PRM training recipe's parts: format adaptation, the surprise stage, contrastive copies, the labels cache."""

import random

import pytest

from reasoning_viz.problems.tinygsm import EQUATION, apply_op
from reasoning_viz.train.labels import load_or_label, perturb_step
from reasoning_viz.train.prm import PRMTrainConfig, adapt_to_format, format_lm_example, gold_format_example, prm_loss
from reasoning_viz.train.surprise import add_top_layers, surprise_mask, train_only_top


@pytest.mark.parametrize("step", ["Loses 7: 11 - 7 = 4", "4 times as many: 1 * 4 = 4",
                                  "Splits 3 ways: 63 / 3 = 21", "Buys 5 more: 3 + 5 = 8"])
def test_perturbed_step_is_a_plausible_wrong_step(step):
    a, op, b, c = (lambda m: (int(m[1]), m[2], int(m[3]), int(m[4])))(EQUATION.search(step))
    rng, seen = random.Random(0), set()
    for _ in range(40):
        wrong = perturb_step(step, rng)
        m = EQUATION.search(wrong)
        assert m is not None and wrong != step, wrong
        a2, op2, b2, c2 = int(m[1]), m[2], int(m[3]), int(m[4])
        assert c2 >= 0 and (a2, op2, b2, c2) != (a, op, b, c)
        if b2 != b:  # a different operand is also the one the words name
            assert wrong.startswith(step.split(":")[0].replace(str(b), str(b2), 1))
        seen.add("result" if (a2, op2, b2) == (a, op, b) else "consistent" if apply_op(a2, op2, b2) == c2 else "?")
    assert seen == {"result", "consistent"} or (op == "/" and seen == {"result"}), seen
    assert perturb_step(r"The answer is \boxed{8}.", rng) is None


def test_result_only_slips_keep_the_operands():
    rng = random.Random(1)
    for _ in range(20):
        wrong = EQUATION.search(perturb_step("Loses 7: 11 - 7 = 4", rng, kinds=("result",)))
        assert (wrong[1], wrong[2], wrong[3]) == ("11", "-", "7") and wrong[4] != "4"


def test_format_example_trains_next_tokens_of_the_steps_only(tiny_models):
    prm = tiny_models.scorer
    question = "Noah has 18 cards. He buys 2 more cards. How many?"
    steps = ["Buys 2: 18 + 2 = 20", r"The answer is \boxed{20}."]
    ids, labels = format_lm_example(prm, question, steps)
    assert ids == prm.encode(question, steps) and len(labels) == len(ids)
    trained = prm.tokenizer.decode([t for t, y in zip(ids, labels) if y != -100])
    assert "Noah" not in trained and "18 + 2 = 20" in trained and r"\boxed{20}" in trained
    tags = [i for i, t in enumerate(ids) if t == prm.step_tag_id]
    assert len(tags) == 2
    # where the PRM reads + / -, next-token training must not pull towards what the text has there
    assert all(labels[i + 1] == -100 for i in tags if i + 1 < len(ids))


def test_format_adaptation_trains_the_answer_line_too(tiny_models):
    from reasoning_viz.train.policy import ProblemStream

    prm = tiny_models.scorer
    problem = ProblemStream(5).next()
    ids, labels = gold_format_example(prm, problem)
    trained = prm.tokenizer.decode([t for t, y in zip(ids, labels) if y != -100])
    assert f"\\boxed{{{problem.answer}}}" in trained and problem.steps[-1] in trained


def test_format_adaptation_teaches_the_policy_the_prm_format():
    """A few steps of next-token training on gold solutions lower the loss on unseen ones in the PRM's format."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reasoning_viz.models.scorers import MathShepherdPRM
    from reasoning_viz.train.common import POLICY_DIR, pad_batch
    from reasoning_viz.train.policy import ProblemStream

    torch.manual_seed(0)
    prm = MathShepherdPRM(AutoModelForCausalLM.from_pretrained(POLICY_DIR), AutoTokenizer.from_pretrained(POLICY_DIR))
    held = [format_lm_example(prm, p.question, list(p.steps)) for p in (ProblemStream(99).next() for _ in range(16))]
    batch = pad_batch([e[0] for e in held], [e[1] for e in held], prm.tokenizer.pad_token_id)

    def held_loss() -> float:
        with torch.no_grad():
            return prm.model(**batch).loss.item()

    before = held_loss()
    losses = adapt_to_format(prm, ProblemStream(5), steps=12, lr=1e-3, batch_size=8, log_path=None)
    assert len(losses) == 12
    assert held_loss() < 0.8 * before, (before, held_loss())


def test_labels_cache_is_reused_only_for_the_same_recipe(bundled_models, tmp_path):
    cfg = PRMTrainConfig(problems=2, samples_per_problem=1, rollouts=2, max_solution_tokens=120,
                         labels_cache=tmp_path / "labels.json")
    first = load_or_label(bundled_models.generator, cfg)
    assert cfg.labels_cache.exists() and first
    assert load_or_label(None, cfg) == first  # no generator needed: nothing is labelled again
    cfg.rollouts = 3
    with pytest.raises(SystemExit, match="another recipe"):
        load_or_label(None, cfg)


def test_bad_recipe_or_cache_is_refused_with_a_message(tmp_path):
    from reasoning_viz.train.__main__ import main

    for flag in ("--problems", "--batch-size"):
        with pytest.raises(SystemExit, match="problems, steps, rollouts and batch-size >= 1"):
            main(["prm", flag, "0", "--out", str(tmp_path)])
    for flag in ("--perturbed-per-path", "--format-steps", "--surprise-layers", "--surprise-steps", "--code-rank",
                 "--compare-steps"):
        with pytest.raises(SystemExit, match="perturbed-per-path, format-steps, surprise-steps, surprise-layers"):
            main(["prm", flag, "-1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--code-rank needs --compare-steps or --surprise-layers"):
        main(["prm", "--compare-steps", "0", "--code-rank", "8", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--compare-steps needs --code-rank"):
        main(["prm", "--code-rank", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="set one of them to 0"):
        main(["prm", "--surprise-layers", "2", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="carries at most 64 numbers"):  # the bundled policy: 2 x 32
        main(["prm", "--code-rank", "65", "--out", str(tmp_path)])
    # with neither reader of the surprise the default code layer goes too: validation gets past the code-rank check
    with pytest.raises(SystemExit, match="no folder"):
        main(["prm", "--compare-steps", "0", "--labels-cache", str(tmp_path / "missing" / "labels.json"),
              "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="no folder"):
        main(["prm", "--labels-cache", str(tmp_path / "missing" / "labels.json"), "--out", str(tmp_path)])
    broken = tmp_path / "labels.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(SystemExit, match="not a labels cache"):
        load_or_label(None, PRMTrainConfig(labels_cache=broken))


def _probe_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "prm_learnability.py"
    spec = importlib.util.spec_from_file_location("prm_learnability", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_probe_pairs_differ_only_in_the_slipped_last_step():
    from reasoning_viz.train.policy import ProblemStream

    probe, stream, rng = _probe_module(), ProblemStream(3), random.Random(0)
    for _ in range(20):
        right, slipped = probe.slipped_pair(stream, rng, ("result",))
        assert right.question == slipped.question and right.steps[:-1] == slipped.steps[:-1]
        assert right.steps[-1] != slipped.steps[-1] and EQUATION.search(slipped.steps[-1])
        assert right.labels == [1.0] * len(right.steps) and slipped.labels == [1.0] * (len(right.steps) - 1) + [0.0]


def test_probe_digit_accuracy_tells_the_two_formats_apart(bundled_models):
    """The bundled policy computes results in its chat format, much less so in the PRM's (measured 99% vs 66%)."""
    from reasoning_viz.models.scorers import MathShepherdPRM
    from reasoning_viz.train.policy import ProblemStream

    probe = _probe_module()
    prm = MathShepherdPRM(bundled_models.generator.model, bundled_models.generator.tokenizer)
    chat = probe.result_digit_accuracy(prm, ProblemStream(4000), 30, chat=True)
    prm_format = probe.result_digit_accuracy(prm, ProblemStream(4000), 30)
    assert chat >= 0.9 and prm_format <= chat - 0.15, (chat, prm_format)


def test_probe_at_slip_labels_only_the_first_wrong_token(tiny_models):
    from reasoning_viz.train.policy import ProblemStream

    probe, stream, rng, prm = _probe_module(), ProblemStream(5), random.Random(0), tiny_models.scorer
    for _ in range(10):
        right, slipped = probe.slipped_pair(stream, rng, ("result",))
        (a, la), (b, lb) = probe.at_slip_examples(prm, right, slipped)
        k = probe.first_difference(a, b)
        assert a[:k] == b[:k] and a[k] != b[k]
        assert prm.tokenizer.decode([b[k]]).isdigit(), "the slip starts at a digit of the result"
        assert [(i, x) for i, x in enumerate(la) if x != -100] == [(k, 1.0)]
        assert [(i, x) for i, x in enumerate(lb) if x != -100] == [(k, 0.0)]
        assert 0.0 <= probe.p_good_at(prm, b, k) <= 1.0


def test_top_layers_change_nothing_until_trained(tiny_models, tmp_path):
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    model = copy.deepcopy(tiny_models.scorer.model)
    ids = torch.randint(5, 600, (2, 30))
    before = model(ids).logits
    add_top_layers(model, 2)
    assert len(model.model.layers) == model.config.num_hidden_layers == 4
    assert torch.allclose(model(ids).logits, before, atol=1e-5)
    with torch.no_grad():
        model.model.layers[-1].mlp.down_proj.weight.normal_(std=0.05)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert not torch.allclose(reloaded(ids).logits, before, atol=1e-3)
    assert torch.allclose(reloaded(ids).logits, model.eval()(ids).logits, atol=1e-5)


def test_surprise_mask_marks_only_the_tokens_the_policy_wrote(tiny_models):
    prm = tiny_models.scorer
    question, steps = "Mia has 3 apples. How many now?", ["3 + 1 = 4", "The answer is \\boxed{4}."]
    ids = prm.encode(question, steps)
    mask = surprise_mask(prm, question, ids)
    start = len(prm.tokenizer.encode(prm.format(question, [])))
    assert not any(mask[:start])  # the question is not the policy's
    tags = [i for i, t in enumerate(ids) if t == prm.step_tag_id]
    assert len(tags) == 2 and not any(mask[i] or mask[i + 1] for i in tags[:-1]) and not mask[tags[-1]]
    assert sum(mask) > 0 and all(mask[i] for i in range(start, tags[0]))


def test_surprise_loss_targets_the_base_models_own_token_probability(tiny_models):
    import copy

    import torch

    prm = tiny_models.scorer
    model = copy.deepcopy(prm.model)
    n_base = len(model.model.layers)
    add_top_layers(model, 1)  # still the identity: the final logits are the base's
    question, steps = "Mia has 3 apples. How many now?", ["3 + 1 = 4", "The answer is \\boxed{4}."]
    ids = prm.encode(question, steps)
    batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
             "labels": torch.full((1, len(ids)), -100.0),
             "surprise_mask": torch.tensor([surprise_mask(prm, question, ids)]).bool()}
    loss = prm_loss(model, batch, prm.candidate_ids, n_base, tag_weight=0.0, surprise_weight=1.0)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    at = [i for i, m in enumerate(batch["surprise_mask"][0]) if m]
    p_token = torch.stack([logits[i - 1].softmax(-1)[ids[i]] for i in at])
    two_way = logits[at][:, prm.candidate_ids].log_softmax(-1)
    expected = -(p_token * two_way[:, 0] + (1 - p_token) * two_way[:, 1]).mean()
    assert torch.allclose(loss, expected, atol=1e-5)


def test_only_the_top_layers_train(tiny_models):
    import copy

    import torch

    model = copy.deepcopy(tiny_models.scorer.model)
    n_base = len(model.model.layers)
    add_top_layers(model, 1)
    train_only_top(model, n_base)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(f"model.layers.{n_base}.") for n in trainable)
    before = model.model.embed_tokens.weight.clone()
    model(torch.randint(5, 600, (1, 12))).logits.sum().backward()
    torch.optim.AdamW(model.parameters(), lr=0.1).step()
    assert torch.equal(model.model.embed_tokens.weight, before)  # tied: the LM head stays the base's too
    assert model.model.layers[n_base].mlp.down_proj.weight.abs().sum() > 0


def _tiny_llama(vocab: int = 50, hidden: int = 32):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def test_code_layer_is_fitted_by_regression_and_refuses_a_rank_above_the_vocabulary():
    import torch

    from reasoning_viz.train.surprise import add_code_layer

    model = _tiny_llama()
    with torch.no_grad():
        model.lm_head.weight.mul_(40)  # sharp next-token distributions, as a trained policy's are
    hidden = torch.randn(3000, 32)
    untrained, _ = add_code_layer(_tiny_llama(), hidden, rank=8, steps=0, lr=3e-3, seed=0)
    fitted, code = add_code_layer(model, hidden, rank=8, steps=300, lr=3e-3, seed=0)
    assert code.of(model, model.model.norm(hidden)).shape == (3000, 8)
    assert fitted < 0.5 < untrained  # the code is unit-scaled: 1.0 is what predicting nothing costs
    layer = model.model.layers[-1]
    assert len(model.model.layers) == 3 and model.config.num_hidden_layers == 3
    assert layer.self_attn.o_proj.weight.abs().max() == 0  # its attention writes nothing
    assert torch.equal(layer.post_attention_layernorm.weight, model.model.norm.weight)  # reads normed states
    with pytest.raises(ValueError, match="vocabulary size"):
        add_code_layer(_tiny_llama(), hidden, rank=51, steps=1, lr=1e-3, seed=0)


def test_previous_token_loss_is_zero_only_for_attention_on_the_position_before():
    import torch

    from reasoning_viz.train.surprise import previous_token_loss

    length = 6
    on_previous = torch.zeros(1, 2, length, length)
    on_previous[0, :, 0, 0] = 1
    for t in range(1, length):
        on_previous[0, :, t, t - 1] = 1
    uniform = torch.tril(torch.ones(length, length))
    uniform = (uniform / uniform.sum(-1, keepdim=True)).expand(1, 2, length, length)
    mask = torch.ones(1, length, dtype=torch.bool)
    assert previous_token_loss(on_previous, mask).item() < 1e-5
    assert previous_token_loss(uniform, mask).item() > 0.5
    only_third = uniform.clone()
    only_third[..., 3, :] = on_previous[..., 3, :]
    assert previous_token_loss(only_third, mask).item() > 0.5
    mask[:] = False
    mask[0, 3] = True  # positions outside the mask do not count
    assert previous_token_loss(only_third, mask).item() < 1e-5


def test_min_pool_layer_adds_the_lowest_logit_before_a_position():
    import torch

    from reasoning_viz.train.surprise import add_top_layers, init_min_pool

    model = _tiny_llama()
    with torch.no_grad():  # a direction every position shares, as a trained model's residual has
        model.model.embed_tokens.weight.add_(0.02 * torch.randn(32))
    add_top_layers(model, 1)
    plus, minus = 3, 4
    direction = model.lm_head.weight[plus] - model.lm_head.weight[minus]
    ids = torch.randint(5, 50, (1, 40))
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        below = out.hidden_states[2][0]  # what the pooling layer reads
        init_min_pool(model, 2, [plus, minus], below, sharpness=30.0)
        per_position = model.model.norm(below) @ direction
        after = model(input_ids=ids).logits[0]
    logit = after[:, plus] - after[:, minus]
    added = logit - per_position
    running_min = torch.cummin(per_position, 0).values
    running_mean = torch.cumsum(per_position, 0) / torch.arange(1, len(per_position) + 1)
    # a soft minimum: tracking the lowest logit so far along the sequence, far closer to it than to the mean
    assert torch.corrcoef(torch.stack([added[5:], running_min[5:]]))[0, 1] > 0.9
    assert (added[5:] - running_min[5:]).abs().mean() < 0.5 * (added[5:] - running_mean[5:]).abs().mean()
    with pytest.raises(ValueError, match="no direction they all share"):
        init_min_pool(model, 2, [plus, minus], torch.randn(40, 32))  # no shared direction: refused


def test_cached_frozen_part_gives_the_same_loss_and_gradients(tiny_models):
    """The surprise stage reads the frozen layers' output from a cache computed once; it must train
    exactly what the full forward did (a code layer's previous-token loss included)."""
    import copy

    import torch

    from reasoning_viz.train.prm import cached_prm_loss
    from reasoning_viz.train.surprise import frozen_part

    prm = tiny_models.scorer
    model = copy.deepcopy(prm.model)
    n_base = len(model.model.layers)
    add_top_layers(model, 1)  # stands in for the code layer: frozen with the base
    n_frozen = n_base + 1
    add_top_layers(model, 2)
    model.set_attn_implementation("eager")
    for layer in model.model.layers[n_base:]:  # new layers that are not the identity any more
        torch.nn.init.normal_(layer.self_attn.o_proj.weight, std=0.05)
        torch.nn.init.normal_(layer.mlp.down_proj.weight, std=0.05)
    train_only_top(model, n_frozen)
    question = "Mia has 3 apples. She buys 2 more. How many now?"
    paths = [["3 + 2 = 5", "The answer is \\boxed{5}."], ["3 + 2 = 6", "6 - 1 = 5", "The answer is \\boxed{5}."]]
    ids = [prm.encode(question, p) for p in paths]
    width = max(map(len, ids))
    batch = {"input_ids": torch.zeros(2, width, dtype=torch.long), "attention_mask": torch.zeros(2, width, dtype=torch.long),
             "labels": torch.full((2, width), -100.0), "surprise_mask": torch.zeros(2, width, dtype=torch.bool),
             "residual": torch.zeros(2, width, model.config.hidden_size), "p_token": torch.zeros(2, width)}
    cache = frozen_part(model, n_base, n_frozen, ids, prm.tokenizer.pad_token_id)
    for row, (seq, (residual, p_token)) in enumerate(zip(ids, cache)):
        batch["input_ids"][row, :len(seq)] = torch.tensor(seq)
        batch["attention_mask"][row, :len(seq)] = 1
        batch["surprise_mask"][row, :len(seq)] = torch.tensor(surprise_mask(prm, question, seq)).bool()
        tags = [i for i, t in enumerate(seq) if t == prm.step_tag_id]
        batch["labels"][row, tags] = torch.linspace(0.2, 0.9, len(tags))
        batch["residual"][row, :len(seq)], batch["p_token"][row, :len(seq)] = residual, p_token
    grads = []
    for loss_fn in (lambda: prm_loss(model, batch, prm.candidate_ids, n_base, 1.0, 1.0, previous_layer=n_frozen),
                    lambda: cached_prm_loss(model, batch, prm.candidate_ids, n_frozen, 1.0, 1.0, previous_layer=n_frozen)):
        model.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    (full, full_grads), (cached, cached_grads) = grads
    assert len(model.model.layers) == n_frozen + 2  # the context manager put every layer back
    assert torch.allclose(full, cached, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(full_grads, cached_grads))


def test_comparison_layer_reads_the_base_models_surprise_at_every_token(tmp_path):
    """The fitted layer must look one position back and put the base's log-odds of the token it sees
    into the +/- logits; the residual it returns must be what the saved model computes."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from reasoning_viz.train.surprise import (LOG_ODDS_RANGE, add_code_layer, add_comparison_layer, frozen_part,
                                              residual_at)

    torch.manual_seed(0)  # a small vocabulary, so that a 16-number code keeps nearly all of a prediction
    model = LlamaForCausalLM(LlamaConfig(vocab_size=20, hidden_size=32, intermediate_size=256, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                         tie_word_embeddings=True)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(6)  # a confident base, sampled hot below: most tokens likely, some slips
        ids = torch.randint(5, 20, (120, 1))
        for _ in range(23):  # sequences the base itself wrote, so that its probability of a token varies
            logits = model(ids).logits[:, -1] / 1.5
            ids = torch.cat([ids, torch.multinomial(logits.softmax(-1), 1)], 1)
    sequences = ids.tolist()
    hidden, _ = residual_at(model, 2, sequences, pad_id=0)
    _, code = add_code_layer(model, hidden, rank=16, steps=400, lr=3e-3, seed=0)
    frozen = frozen_part(model, 2, 3, sequences, pad_id=0)
    masks = [[0] + [1] * (len(s) - 1) for s in sequences]
    codes = code.of(model, model.model.norm(hidden))
    with pytest.raises(ValueError, match="carries 16 numbers"):  # 2 key/value heads of 8
        add_comparison_layer(model, [f[0] for f in frozen], [f[1] for f in frozen], masks,
                             torch.zeros(len(codes), 17), [3, 4], steps=1, lr=3e-3, seed=0)
    assert len(model.model.layers) == 3  # refused before it added a layer
    _, leaving = add_comparison_layer(model, [f[0] for f in frozen], [f[1] for f in frozen], masks, codes,
                                      [3, 4], steps=300, lr=3e-3, seed=0)
    target = torch.cat([torch.logit(f[1][1:].clamp(1e-6, 1 - 1e-6)) for f in frozen]).clamp(*LOG_ODDS_RANGE)
    with torch.no_grad():
        out = model(ids)
        # the saved model computes the residual the tag training is given
        assert torch.allclose(out.logits, model.lm_head(model.model.norm(torch.stack(leaving))), atol=1e-4)
        model.save_pretrained(tmp_path)  # and so does it once saved and loaded
        saved = LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
        attention = saved(ids, output_attentions=True).attentions[3]
        assert torch.allclose(saved(ids).logits, out.logits, atol=1e-5)
    read = out.logits[:, 1:, 3] - out.logits[:, 1:, 4]
    assert torch.corrcoef(torch.stack([read.flatten(), target]))[0, 1] > 0.8
    on_previous = torch.diagonal(attention[:, [0, 2]], offset=-1, dim1=-2, dim2=-1)  # the heads that write
    assert on_previous.mean() > 0.4  # attention spread evenly over the positions before: 0.12
