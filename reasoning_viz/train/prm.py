"""Train the bundled PRM the way Math-Shepherd does, on solutions sampled from *our* policy.
Steps 1-2 (the labels) are in ``labels.py``; this file trains on them.

1. Sample solutions to fresh training problems from the bundled policy.
2. Label every step by Monte-Carlo rollouts: from the prefix ending at that step, K completions;
   the step's label is the **fraction** of rollouts that reach the gold answer ("soft
   estimation"); the final step's label is whether its answer is the gold one.
   Why soft rather than hard ("any rollout reaches the gold") labels: our policy sometimes
   ignores a wrong number it just wrote and recomputes from the question, so a wrong step can
   still reach the gold in one of K rollouts. Hard labels call that step exactly as good as a
   right one; the fraction ranks it well below (measured on 96 training problems against the
   exact step checker: AUROC of the labels themselves 0.971 soft vs 0.962 hard).
Steps 3 and 4 are on in the shipped recipe (the PRM's model card says what each measured). With
``format_steps=0, compare_steps=0, code_rank=0`` step 5 alone fine-tunes every layer of the policy's
copy (the first recipe, with ``steps=800, batch_size=32``).

3. Teach a copy of the policy the PRM's input format (``format_steps``): next-token training on
   gold solutions written as the PRM reads them (``format_lm_example``), so that it still
   predicts there what it predicts in its own chat format.
4. With the copy frozen, put its **surprise** into the PRM: at every token the policy wrote, P(``+``)
   read there should be the copy's own probability of that token. Hot sampling goes wrong through
   tokens the model itself found unlikely; a PRM cannot learn to notice them from step labels alone
   (see ``scripts/prm_learnability.py``). Two new layers, each fitted by regression on cached
   positions, not trained through a loss at the tags: a code layer (``add_code_layer``, ``code_rank``)
   whose MLP writes at every position a short code of the copy's next-token prediction, and a
   comparison layer (``add_comparison_layer``, ``compare_steps``) whose attention carries that code
   one position on and whose MLP turns code and token into the token's log-odds.
   The recipe before (``compare_steps=0, surprise_layers=2, surprise_steps=3000``) trained layers
   above the code layer on the **surprise loss** (``prm_loss``) instead, at a target per token.
5. (With step 4, one more new layer first.) The Math-Shepherd loss: the two-way softmax over the ``+``/``-``
   logits at each ``ки`` tag trained towards (label, 1 - label) — exactly what Math-Shepherd's
   inference reads back as P(``+``); with trained surprise layers, their surprise loss kept beside it.
   With a code layer, the tag layer starts as a pool of the path's lowest token score
   (``init_min_pool``): a path is as good as its weakest token.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ..models.generator import StepGenerator
from ..models.scorers import MathShepherdPRM
from ..problems.tinygsm import Problem, final_answer_line
from .labels import LabeledPath, load_or_label
from .common import POLICY_DIR, PRM_DIR, pad_batch, seed_everything, train_loop, use_all_cores
from .policy import ProblemStream
from .surprise import (add_code_layer, add_comparison_layer, add_top_layers, base_token_probs, frozen_part,
                       init_min_pool, only_layers, previous_token_loss, residual_at, surprise_mask, train_only_top)


@dataclass
class PRMTrainConfig:
    seed: int = 0
    problems: int = 1500  # training problems to sample solutions for
    samples_per_problem: int = 2
    sample_temperature: float = 1.7  # the app's default for the bundled policy: score what users see
    rollout_temperature: float = 1.0  # cooler rollouts rarely miss the gold from a correct step
    rollouts: int = 6  # K completions per step
    perturbed_per_path: int = 0  # contrastive copies per path (see contrastive_paths); off in the shipped recipe
    max_solution_tokens: int = 256
    labels_cache: Path | None = None  # reuse the labelled paths from here (written on the first run)
    # Stages 3-4 (the PRM's model card says what each measured):
    format_steps: int = 200  # next-token steps on gold solutions in the PRM's format first (format_lm_example)
    format_batch_size: int = 32
    code_rank: int = 64  # first a layer fitted to write a code of the base's prediction (add_code_layer)
    code_fit_steps: int = 1500  # regression steps that fit that layer
    compare_steps: int = 4000  # regression steps of the layer that reads the base's surprise (add_comparison_layer)
    compare_lr: float = 3e-3
    surprise_layers: int = 0  # new top layers trained on the surprise loss (prm_loss) instead; the recipe before
    surprise_steps: int = 3000  # their steps before the tags (1000 gave best-of-16 54%, 3000: 76%)
    tag_layers: int = 1  # with surprise layers or the comparison: one more new layer, added for the tag training
    surprise_weight: float = 1.0  # with surprise layers: the surprise loss kept beside the tag loss
    steps: int = 400  # tag steps (the whole fine-tune without surprise layers)
    batch_size: int = 16  # paths per step, surprise and tag stages
    lr: float = 1e-3
    policy_dir: Path = POLICY_DIR
    out_dir: Path = PRM_DIR
    quick: bool = False

    def apply_quick(self) -> None:
        self.problems, self.samples_per_problem, self.rollouts, self.steps, self.batch_size = 6, 2, 2, 4, 4
        self.format_steps, self.surprise_steps, self.format_batch_size, self.code_fit_steps = 2, 2, 4, 2
        self.max_solution_tokens, self.surprise_layers = 24, min(self.surprise_layers, 1)
        self.code_rank, self.compare_steps = min(self.code_rank, 8), min(self.compare_steps, 2)

    def validate(self) -> None:
        """Refuse a recipe that would fail late (after minutes of labelling) with a clear message."""
        if min(self.problems, self.steps, self.rollouts, self.batch_size) < 1 or min(
                self.perturbed_per_path, self.format_steps, self.surprise_steps, self.surprise_layers,
                self.tag_layers, self.surprise_weight, self.code_rank, self.code_fit_steps, self.compare_steps) < 0:
            raise SystemExit("need problems, steps, rollouts and batch-size >= 1, and perturbed-per-path, format-steps, "
                             "surprise-steps, surprise-layers, tag-layers, surprise-weight, code-rank, "
                             "code-fit-steps and compare-steps >= 0")
        if self.compare_steps and self.surprise_layers:
            raise SystemExit("--compare-steps and --surprise-layers are two ways to read the surprise: "
                             "set one of them to 0")
        if self.code_rank and not (self.surprise_layers or self.compare_steps):
            raise SystemExit("--code-rank needs --compare-steps or --surprise-layers >= 1 (a layer after it "
                             "reads the code)")
        if self.compare_steps and not self.code_rank:
            raise SystemExit("--compare-steps needs --code-rank >= 1 (it compares a token with that code)")
        if self.compare_steps:
            config = AutoConfig.from_pretrained(self.policy_dir)
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
            carried = config.num_key_value_heads * head_dim
            if self.code_rank > carried:
                raise SystemExit(f"--code-rank {self.code_rank}: the comparison layer's attention carries at "
                                 f"most {carried} numbers from the position before")
        if self.labels_cache is not None and not self.labels_cache.parent.is_dir():
            raise SystemExit(f"no folder {self.labels_cache.parent} for the labels cache")


def prm_example(prm: MathShepherdPRM, path: LabeledPath) -> tuple[list[int], list[float]]:
    """Input ids in the PRM format and the target P(+) at each step tag, -100 elsewhere."""
    ids = prm.encode(path.question, path.steps)
    targets = [-100.0] * len(ids)
    tags = [i for i, t in enumerate(ids) if t == prm.step_tag_id]
    for pos, label in zip(tags, path.labels):
        targets[pos] = label
    return ids, targets


def format_lm_example(prm: MathShepherdPRM, question: str, steps: list[str]) -> tuple[list[int], list[int]]:
    """A gold solution in the PRM's input format, with next-token labels on its steps only.

    Why: the policy computes ``8 * 2 = 16`` in its own chat format, but fed the PRM's format
    (``question Step 1: ... ки``) it predicts the right result digits far less often, so a PRM
    started from it cannot check arithmetic it no longer does. Next-token training on gold
    solutions in this format restores it. Nothing is predicted at a tag, where the PRM's
    ``+``/``-`` are read.
    """
    ids = prm.encode(question, steps)
    start = len(prm.tokenizer.encode(prm.format(question, [])))  # the question and the space after it
    labels = [-100 if i < start or ids[i - 1] == prm.step_tag_id else t for i, t in enumerate(ids)]
    return ids, labels


def gold_format_example(prm: MathShepherdPRM, problem: Problem) -> tuple[list[int], list[int]]:
    """``format_lm_example`` of a problem's whole gold solution. The answer line is a step too:
    trained without it, the copy no longer expects ``The answer is \\boxed{...}`` and finds every
    solution's last step surprising."""
    return format_lm_example(prm, problem.question, [*problem.steps, final_answer_line(problem.answer)])


def adapt_to_format(prm: MathShepherdPRM, stream: ProblemStream, steps: int, lr: float, batch_size: int,
                    log_path: Path | None) -> list[float]:
    """Next-token training of ``prm.model`` on gold solutions in the PRM's input format; the losses."""

    def gold_batch(step: int) -> dict[str, torch.Tensor]:
        examples = [gold_format_example(prm, stream.next()) for _ in range(batch_size)]
        return pad_batch([e[0] for e in examples], [e[1] for e in examples], prm.tokenizer.pad_token_id)

    return train_loop(prm.model, gold_batch, lambda model, batch: model(**batch).loss, steps, lr, log_path,
                      desc="prm format", warmup=30)


def two_way_loss(logits: torch.Tensor, p_good: torch.Tensor, candidates: list[int]) -> torch.Tensor:
    """Cross entropy of the two-way softmax over the ``+``/``-`` logits against (p_good, 1 - p_good)."""
    return torch.nn.functional.cross_entropy(logits[:, candidates], torch.stack([p_good, 1 - p_good], dim=-1))


def tag_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], candidates: list[int]) -> torch.Tensor:
    """The Math-Shepherd loss alone: at each tag, P(+) against the step's label."""
    return prm_loss(model, batch, candidates, n_base=0, tag_weight=1.0, surprise_weight=0.0)


def prm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], candidates: list[int], n_base: int,
             tag_weight: float, surprise_weight: float, previous_layer: int | None = None) -> torch.Tensor:
    """Tag loss (Math-Shepherd) plus the surprise loss, from one forward pass.

    Surprise loss: at every token the policy wrote, P(+) read there is trained towards the frozen
    base's own probability of that token given what came before. A slip sampled at a hot
    temperature is a token the model itself found unlikely, so this is the check a step needs;
    a PRM cannot learn it from step labels alone (``scripts/prm_learnability.py``: a right token
    and its slip differ only in whether they *agree* with the prediction one position back, an
    XOR that gradient descent does not find), but with a target at every token it does.

    With a code layer (``add_code_layer``), ``previous_layer`` is the layer after it: its heads are
    also trained to attend to the position just before (``previous_token_loss``), and every position
    off the solution is trained to read ``+``, so that a tag can pool the path's lowest score.
    """
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                output_hidden_states=surprise_weight > 0, output_attentions=previous_layer is not None)
    p_token = None
    if surprise_weight:
        with torch.no_grad():  # the target: its layers are frozen
            p_token = base_token_probs(model, out.hidden_states[n_base], batch["input_ids"])
    attentions = out.attentions[previous_layer] if previous_layer is not None else None
    return _loss_terms(out.logits, attentions, p_token, batch, candidates, tag_weight, surprise_weight)


def cached_prm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], candidates: list[int], n_frozen: int,
                    tag_weight: float, surprise_weight: float, previous_layer: int | None = None) -> torch.Tensor:
    """``prm_loss`` with the frozen layers' work read from ``batch`` (``frozen_part``): the trained layers
    run on the cached residual ``batch["residual"]``, the target is ``batch["p_token"]``."""
    with only_layers(model, n_frozen):
        out = model(inputs_embeds=batch["residual"], attention_mask=batch["attention_mask"],
                    output_attentions=previous_layer is not None)
    attentions = out.attentions[previous_layer - n_frozen] if previous_layer is not None else None
    return _loss_terms(out.logits, attentions, batch["p_token"], batch, candidates, tag_weight, surprise_weight)


def _loss_terms(logits: torch.Tensor, attentions: torch.Tensor | None, p_token: torch.Tensor | None,
                batch: dict[str, torch.Tensor], candidates: list[int], tag_weight: float,
                surprise_weight: float) -> torch.Tensor:
    loss = logits.new_zeros(())
    if tag_weight:
        at = batch["labels"] != -100
        loss = loss + tag_weight * two_way_loss(logits[at], batch["labels"][at], candidates)
    if surprise_weight:
        at = batch["surprise_mask"]
        if attentions is None:
            loss = loss + surprise_weight * two_way_loss(logits[at], p_token[at], candidates)
        else:
            real = batch["attention_mask"].bool()
            target = torch.where(at, p_token, torch.ones_like(p_token))
            loss = loss + surprise_weight * (two_way_loss(logits[real], target[real], candidates)
                                             + previous_token_loss(attentions, at))
    return loss


def train_prm(cfg: PRMTrainConfig) -> Path:
    """Label policy samples by rollouts, fine-tune the PRM, save it to ``cfg.out_dir``."""
    cfg.validate()
    use_all_cores()
    seed_everything(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.policy_dir)
    policy = AutoModelForCausalLM.from_pretrained(cfg.policy_dir).eval()
    generator = StepGenerator(policy, tokenizer, memory_budget_mb=512)
    start = time.time()
    paths = load_or_label(generator, cfg)
    n_steps = sum(len(p.labels) for p in paths)
    label_sum = sum(sum(p.labels) for p in paths)
    print(f"prm: {n_steps} labelled steps on {len(paths)} paths "
          f"(mean label {label_sum / max(1, n_steps):.1%}) in {time.time() - start:.0f}s")

    model = AutoModelForCausalLM.from_pretrained(cfg.policy_dir)  # Math-Shepherd starts from the policy
    prm = MathShepherdPRM(model, tokenizer)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.format_steps:  # its own problems: neither the labelled nor the held-out ones
        adapt_to_format(prm, ProblemStream(cfg.seed + 2000), cfg.format_steps, cfg.lr, cfg.format_batch_size,
                        cfg.out_dir / "format_log.jsonl")
    n_base = len(model.model.layers)
    examples = []
    for p in paths:
        ids, targets = prm_example(prm, p)
        examples.append((ids, targets, surprise_mask(prm, p.question, ids)))
    rng = random.Random(cfg.seed)
    frozen: list[tuple[torch.Tensor, torch.Tensor]] = []  # per example, once the base is frozen (frozen_part)

    def next_batch(step: int) -> dict[str, torch.Tensor]:
        picks = [rng.randrange(len(examples)) for _ in range(cfg.batch_size)]
        chosen = [examples[i] for i in picks]
        batch = pad_batch([c[0] for c in chosen], [c[1] for c in chosen], tokenizer.pad_token_id,
                          label_dtype=torch.float)
        batch["surprise_mask"] = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
        for row, c in enumerate(chosen):
            batch["surprise_mask"][row, : len(c[2])] = torch.tensor(c[2], dtype=torch.bool)
        if frozen:
            rows, width = batch["input_ids"].shape
            batch["residual"] = torch.zeros(rows, width, model.config.hidden_size)
            batch["p_token"] = torch.zeros(rows, width)
            for row, i in enumerate(picks):
                residual, p_token = frozen[i]
                batch["residual"][row, : len(residual)], batch["p_token"][row, : len(p_token)] = residual, p_token
        return batch

    loss_at = partial(prm_loss, candidates=prm.candidate_ids, n_base=n_base)
    surprise_weight = cfg.surprise_weight if cfg.surprise_layers else 0.0
    if cfg.surprise_layers or cfg.compare_steps:  # the base stays frozen; only new layers on top learn
        n_frozen = n_base
        sequences = [e[0] for e in examples]
        if cfg.code_rank:
            hidden, _ = residual_at(model, n_base, sequences, tokenizer.pad_token_id)
            held_out, code = add_code_layer(model, hidden, cfg.code_rank, cfg.code_fit_steps, cfg.lr, cfg.seed)
            print(f"prm: code layer fitted ({cfg.code_rank} numbers, held-out error {held_out:.3f})")
            n_frozen += 1  # fitted, not trained further
        model.config.surprise_base_layers = n_base  # saved in config.json: where the frozen base ends
        if cfg.compare_steps:
            frozen.extend(frozen_part(model, n_base, n_frozen, sequences, tokenizer.pad_token_id))
            held_out, leaving = add_comparison_layer(
                model, [f[0] for f in frozen], [f[1] for f in frozen], [e[2] for e in examples],
                code.of(model, model.model.norm(hidden)), prm.candidate_ids, cfg.compare_steps, cfg.compare_lr,
                cfg.seed, cfg.out_dir / "surprise_log.jsonl")
            print(f"prm: comparison layer fitted (held-out error {held_out:.3f} in log-odds squared)")
            frozen[:] = [(after, p_token) for after, (_, p_token) in zip(leaving, frozen)]
            n_frozen += 1  # fitted, not trained further: the tag layer alone trains on it
        else:
            if cfg.code_rank:
                model.set_attn_implementation("eager")  # the previous-token loss reads attention weights
            add_top_layers(model, cfg.surprise_layers)
            train_only_top(model, n_frozen)
            # From here on only layers >= n_frozen change: run the frozen ones once per example, not per batch.
            frozen.extend(frozen_part(model, n_base, n_frozen, sequences, tokenizer.pad_token_id))
        if cfg.code_rank:
            del hidden
        loss_at = partial(cached_prm_loss, candidates=prm.candidate_ids, n_frozen=n_frozen,
                          previous_layer=n_frozen if cfg.code_rank and cfg.surprise_layers else None)
        if cfg.surprise_layers and cfg.surprise_steps:
            train_loop(model, next_batch, partial(loss_at, tag_weight=0.0, surprise_weight=1.0), cfg.surprise_steps,
                       cfg.lr, cfg.out_dir / "surprise_log.jsonl", desc="prm surprise", warmup=30)
        add_top_layers(model, cfg.tag_layers)
        train_only_top(model, n_frozen)
        if cfg.code_rank and cfg.tag_layers:  # the tags start by pooling the path's lowest token score
            tag_layer = len(model.model.layers) - cfg.tag_layers
            states, ids = residual_at(model, tag_layer, sequences[:300], tokenizer.pad_token_id)
            init_min_pool(model, tag_layer, prm.candidate_ids, states[ids == prm.step_tag_id])
    losses = train_loop(model, next_batch, partial(loss_at, tag_weight=1.0, surprise_weight=surprise_weight),
                        cfg.steps, cfg.lr, cfg.out_dir / "training_log.jsonl", desc="prm", warmup=30)
    print(f"prm: final loss {sum(losses[-50:]) / len(losses[-50:]):.4f}, total {time.time() - start:.0f}s")
    model.save_pretrained(cfg.out_dir, safe_serialization=True)
    tokenizer.save_pretrained(cfg.out_dir)
    return cfg.out_dir
