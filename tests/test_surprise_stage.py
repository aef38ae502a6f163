"""The PRM recipe's verifier layers: new top layers, the fitted code and comparison layers, the
min-pool tag layer, and the cache of the frozen layers' output."""

import pytest

from reasoning_viz.train.surprise import add_top_layers, surprise_mask, train_only_top


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


def test_tag_loss_on_the_cached_frozen_part_equals_the_full_forward(tiny_models):
    """The tag layer trains on the frozen layers' output computed once (``frozen_part``); it must train
    exactly what the full forward's Math-Shepherd loss would, loss and gradients alike."""
    import copy

    import torch

    from reasoning_viz.train.prm import tag_loss, two_way_loss
    from reasoning_viz.train.surprise import frozen_part

    prm = tiny_models.scorer
    model = copy.deepcopy(prm.model)
    n_base = len(model.model.layers)
    add_top_layers(model, 2)  # stand in for the fitted layers: frozen with the base
    n_frozen = n_base + 2
    add_top_layers(model, 1)
    for layer in model.model.layers[n_base:]:  # new layers that are not the identity any more
        torch.nn.init.normal_(layer.self_attn.o_proj.weight, std=0.05)
        torch.nn.init.normal_(layer.mlp.down_proj.weight, std=0.05)
    train_only_top(model, n_frozen)
    question = "Mia has 3 apples. She buys 2 more. How many now?"
    paths = [["3 + 2 = 5", "The answer is \\boxed{5}."], ["3 + 2 = 6", "6 - 1 = 5", "The answer is \\boxed{5}."]]
    ids = [prm.encode(question, p) for p in paths]
    width = max(map(len, ids))
    batch = {"input_ids": torch.zeros(2, width, dtype=torch.long), "attention_mask": torch.zeros(2, width, dtype=torch.long),
             "labels": torch.full((2, width), -100.0), "residual": torch.zeros(2, width, model.config.hidden_size)}
    cache = frozen_part(model, n_base, n_frozen, ids, prm.tokenizer.pad_token_id)
    for row, (seq, (residual, _)) in enumerate(zip(ids, cache)):
        batch["input_ids"][row, :len(seq)] = torch.tensor(seq)
        batch["attention_mask"][row, :len(seq)] = 1
        tags = [i for i, t in enumerate(seq) if t == prm.step_tag_id]
        batch["labels"][row, tags] = torch.linspace(0.2, 0.9, len(tags))
        batch["residual"][row, :len(seq)] = residual

    def full_forward():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        at = batch["labels"] != -100
        return two_way_loss(logits[at], batch["labels"][at], prm.candidate_ids)

    grads = []
    for loss_fn in (full_forward, lambda: tag_loss(model, batch, prm.candidate_ids, n_frozen)):
        model.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    (full, full_grads), (cached, cached_grads) = grads
    assert len(model.model.layers) == n_frozen + 1  # the context manager put every layer back
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
