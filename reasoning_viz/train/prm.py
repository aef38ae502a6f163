"""Train the bundled PRM: Math-Shepherd's recipe, labelled by the student, built on the larger model.

The verifier has to know more than the policy it checks, as in real test-time search (a 1B policy, an
8B PRM). So the PRM is a copy of the **larger model**, and what it learns to read is that model's
surprise at each token the **student** wrote: where the student writes ``19 - 16 = 2`` because it
cannot subtract reliably, the larger model expected ``3``.

1. Sample solutions to fresh training problems from the student (``labels.py``).
2. Label every step by Monte-Carlo rollouts of the student: from the prefix ending at that step, K
   completions; the label is the **fraction** that reach the gold answer ("soft estimation"); a final
   answer step is labelled by its answer. Soft, not "any rollout reaches the gold": a wrong step that
   the student sometimes recomputes past still ranks below a right one.
3. Teach the larger model's copy the PRM's input format (``question Step 1: ... ки``): next-token
   training on gold solutions written that way (``format_lm_example``), so that it still predicts
   there what it predicts in its own chat format.
4. Freeze it, and add two layers fitted by regression on cached positions of the labelled paths
   (``surprise.py``): a code layer that writes at every position a 64-number code of the copy's
   next-token prediction, and a comparison layer that carries that code one position on and turns
   code and token into the copy's log-odds of the token there — its surprise.
5. Add a tag layer that starts as a pool of the path's lowest token log-odds (a path is as good as
   its weakest token), and train it alone with the Math-Shepherd loss: the two-way softmax over the
   ``+``/``-`` logits at each ``ки`` tag towards (label, 1 - label), which is exactly what
   Math-Shepherd's inference reads back as P(``+``).

Stages 1-2 are cached (``--labels-cache``), so stages 3-5 can be re-run alone in minutes. What each
stage bought, and the recipes tried before this one, are in the PRM's model card.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ..models.presets import BUNDLED_LARGE, BUNDLED_PRM
from ..models.scorers import MathShepherdPRM
from ..problems.tinygsm import Problem, final_answer_line
from .common import pad_batch, seed_everything, train_loop, use_all_cores
from .labels import LabelConfig, LabeledPath, load_or_label
from .policy import ProblemStream
from .surprise import (add_code_layer, add_comparison_layer, add_top_layers, frozen_part, init_min_pool,
                       only_layers, residual_at, surprise_mask, train_only_top)


@dataclass
class PRMTrainConfig:
    labels: LabelConfig = field(default_factory=LabelConfig)  # stages 1-2
    base_dir: Path = BUNDLED_LARGE  # the model whose layers the PRM is built on
    out_dir: Path = BUNDLED_PRM
    seed: int = 0
    format_steps: int = 200  # stage 3: next-token steps on gold solutions in the PRM's format
    format_batch_size: int = 32
    code_rank: int = 64  # stage 4: numbers in the code of the base's prediction
    code_fit_steps: int = 1500
    compare_steps: int = 4000  # regression steps of the comparison layer
    compare_lr: float = 3e-3
    steps: int = 400  # stage 5: tag-layer steps
    batch_size: int = 16  # paths per tag step
    lr: float = 1e-3
    quick: bool = False

    def apply_quick(self) -> None:
        self.labels.problems, self.labels.samples_per_problem, self.labels.rollouts = 6, 2, 2
        self.labels.max_solution_tokens = 24
        self.steps, self.batch_size, self.format_steps, self.format_batch_size = 4, 4, 2, 4
        self.code_rank, self.code_fit_steps, self.compare_steps, self.quick = 8, 2, 2, True

    def validate(self) -> None:
        """Refuse a recipe that would fail late (after minutes of labelling) with a clear message."""
        if min(self.labels.problems, self.labels.rollouts, self.steps, self.batch_size, self.code_rank,
               self.compare_steps) < 1 or min(self.format_steps, self.code_fit_steps) < 0:
            raise SystemExit("need problems, rollouts, steps, batch-size, code-rank and compare-steps >= 1, "
                             "and format-steps >= 0")
        for folder in (self.base_dir, self.labels.student_dir):
            if not (folder / "config.json").is_file():
                raise SystemExit(f"no model in {folder} (train it first: python -m reasoning_viz.train --help)")
        config = AutoConfig.from_pretrained(self.base_dir)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        carried = config.num_key_value_heads * head_dim
        if self.code_rank > carried:
            raise SystemExit(f"--code-rank {self.code_rank}: the comparison layer's attention carries at "
                             f"most {carried} numbers from the position before")
        if self.labels.cache is not None and not self.labels.cache.parent.is_dir():
            raise SystemExit(f"no folder {self.labels.cache.parent} for the labels cache")


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

    Why: a model computes ``8 * 2 = 16`` in its own chat format, but fed the PRM's format it predicts
    the right result digits far less often, so a PRM built on it cannot check arithmetic it no longer
    does. Nothing is predicted at a tag, where the PRM's ``+``/``-`` are read.
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


def tag_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], candidates: list[int],
             n_frozen: int) -> torch.Tensor:
    """The Math-Shepherd loss at the tags, with the frozen layers' output read from the batch: only the
    layers from ``n_frozen`` on run, on the cached residual ``batch["residual"]`` (``frozen_part``)."""
    with only_layers(model, n_frozen):
        logits = model(inputs_embeds=batch["residual"], attention_mask=batch["attention_mask"]).logits
    at = batch["labels"] != -100
    return two_way_loss(logits[at], batch["labels"][at], candidates)


def train_prm(cfg: PRMTrainConfig) -> Path:
    """Label the student's samples by its rollouts, build the PRM on the larger model, save it to ``cfg.out_dir``."""
    cfg.validate()
    use_all_cores()
    seed_everything(cfg.seed)
    start = time.time()
    paths = load_or_label(cfg.labels)  # stages 1-2
    n_steps = sum(len(p.labels) for p in paths)
    label_sum = sum(sum(p.labels) for p in paths)
    print(f"prm: {n_steps} labelled steps on {len(paths)} paths "
          f"(mean label {label_sum / max(1, n_steps):.1%}) in {time.time() - start:.0f}s")

    tokenizer = AutoTokenizer.from_pretrained(cfg.base_dir)
    model = AutoModelForCausalLM.from_pretrained(cfg.base_dir)
    prm = MathShepherdPRM(model, tokenizer)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.format_steps:  # stage 3, on its own problems: neither the labelled nor the held-out ones
        adapt_to_format(prm, ProblemStream(cfg.seed + 2000), cfg.format_steps, cfg.lr, cfg.format_batch_size,
                        cfg.out_dir / "format_log.jsonl")

    # Stage 4: the base stays frozen from here on; each new layer is fitted, then frozen in turn.
    n_base = len(model.model.layers)
    model.config.surprise_base_layers = n_base  # saved in config.json: where the frozen base ends
    examples = [prm_example(prm, p) for p in paths]
    sequences = [ids for ids, _ in examples]
    masks = [surprise_mask(prm, p.question, ids) for p, ids in zip(paths, sequences)]
    hidden, _ = residual_at(model, n_base, sequences, tokenizer.pad_token_id)
    held_out, code = add_code_layer(model, hidden, cfg.code_rank, cfg.code_fit_steps, cfg.lr, cfg.seed)
    print(f"prm: code layer fitted ({cfg.code_rank} numbers, held-out error {held_out:.3f})")
    frozen = frozen_part(model, n_base, n_base + 1, sequences, tokenizer.pad_token_id)
    held_out, leaving = add_comparison_layer(
        model, [f[0] for f in frozen], [f[1] for f in frozen], masks, code.of(model, model.model.norm(hidden)),
        prm.candidate_ids, cfg.compare_steps, cfg.compare_lr, cfg.seed, cfg.out_dir / "surprise_log.jsonl")
    print(f"prm: comparison layer fitted (held-out error {held_out:.3f} in log-odds squared)")
    del hidden, frozen
    n_frozen = n_base + 2

    # Stage 5: the tag layer, started as a pool of the path's lowest token score, trained alone.
    add_top_layers(model, 1)
    train_only_top(model, n_frozen)
    states, ids = residual_at(model, n_frozen, sequences[:300], tokenizer.pad_token_id)
    init_min_pool(model, n_frozen, prm.candidate_ids, states[ids == prm.step_tag_id])
    rng = random.Random(cfg.seed)

    def next_batch(step: int) -> dict[str, torch.Tensor]:
        picks = [rng.randrange(len(examples)) for _ in range(cfg.batch_size)]
        batch = pad_batch([examples[i][0] for i in picks], [examples[i][1] for i in picks], tokenizer.pad_token_id,
                          label_dtype=torch.float)
        batch["residual"] = torch.zeros(*batch["input_ids"].shape, model.config.hidden_size)
        for row, i in enumerate(picks):
            batch["residual"][row, : len(leaving[i])] = leaving[i]
        return batch

    losses = train_loop(model, next_batch, lambda m, batch: tag_loss(m, batch, prm.candidate_ids, n_frozen),
                        cfg.steps, cfg.lr, cfg.out_dir / "training_log.jsonl", desc="prm", warmup=30)
    print(f"prm: final loss {sum(losses[-50:]) / len(losses[-50:]):.4f}, total {time.time() - start:.0f}s")
    model.save_pretrained(cfg.out_dir, safe_serialization=True)
    tokenizer.save_pretrained(cfg.out_dir)
    return cfg.out_dir
