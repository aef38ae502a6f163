"""Math-Shepherd's labels for the PRM: sample our policy's solutions, label every step by
Monte-Carlo rollouts (soft estimation; ``prm.py`` says why), optionally add contrastive copies with one
step made wrong, and cache the result so training variants can be compared without relabelling."""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from ..models.generator import SamplingParams, StepGenerator, encode_steps
from ..problems.grading import answers_match, extract_boxed
from ..problems.tinygsm import EQUATION, apply_op
from .policy import ProblemStream

if TYPE_CHECKING:  # only for annotations: prm.py imports this module
    from .prm import PRMTrainConfig


def split_steps(solution: str) -> list[str]:
    """A model's solution as a list of non-empty steps (paragraphs)."""
    return [s.strip() for s in solution.split("\n\n") if s.strip()]


@dataclass
class LabeledPath:
    question: str
    steps: list[str]
    labels: list[float]  # per step: fraction of rollouts reaching the gold answer, the target P(+)


SLIP_KINDS = ("result", "result", "operand", "operation", "carried")  # a wrong result twice as often


def perturb_step(step: str, rng: random.Random, kinds: tuple[str, ...] = SLIP_KINDS) -> str | None:
    """A plausible wrong version of a working step ``words: a op b = c``, or None if it has no equation.

    The kinds of slip the policy makes when sampled hot: a wrong result (``11 - 7 = 3``); a wrong
    operand, in the words too, with the arithmetic then right (``3 times as many: 1 * 3 = 3`` when
    the question says 4 times); the wrong operation; the wrong running value carried in. Only the
    rollouts decide how wrong the copy is; this only proposes it. ``kinds`` picks among them
    (``("result",)``: only a wrong result, with the equation's operands unchanged).
    """
    m = EQUATION.search(step)
    if m is None:
        return None
    a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
    a2, op2, b2, c2 = a, op, b, c
    kind = rng.choice(kinds)
    if kind == "operand" and op != "/":
        b2 = max(1, b + rng.choice((-3, -2, -1, 1, 2, 3)))
        c2 = apply_op(a, op, b2)
    elif kind == "operation" and op in "+-":
        op2 = "-" if op == "+" else "+"
        c2 = apply_op(a, op2, b)
    elif kind == "carried" and op != "/":
        a2 = max(0, a + rng.choice((-10, -5, -2, -1, 1, 2, 5, 10)))
        c2 = apply_op(a2, op, b)
    if c2 < 0 or c2 == c:  # a wrong result (also the fallback when the kind above does not apply)
        a2, op2, b2 = a, op, b
        d = rng.choice((-10, -2, -1, 1, 2, 10))
        c2 = c + d if c + d >= 0 else c - d
    words = step[: m.start()]
    if b2 != b:
        words = re.sub(rf"\b{b}\b", str(b2), words, count=1)
    return f"{words}{a2} {op2} {b2} = {c2}{step[m.end():]}"


def label_paths(generator: StepGenerator, stream: ProblemStream, cfg: PRMTrainConfig) -> list[LabeledPath]:
    """Sample policy solutions and label each step by MC rollouts (soft estimation).

    Steps are rolled out depth by depth; once no rollout from a step reaches the gold answer, the
    later steps of that path are labelled 0 without rollouts (they build on a result nothing
    recovers from — the first-error assumption of OmegaPRM, Luo et al. 2024). With 24 problems per
    call, this took labelling from 0.65 s to 0.34 s per problem (measured on 48 and 96 problems).
    A final answer step is labelled by its answer, exactly.
    """
    tok = generator.tokenizer
    rng = torch.Generator().manual_seed(cfg.seed)
    pick = random.Random(cfg.seed)
    sample = SamplingParams(temperature=cfg.sample_temperature, max_step_tokens=cfg.max_solution_tokens,
                            stop_at_step=False)
    rollout = SamplingParams(temperature=cfg.rollout_temperature, max_step_tokens=cfg.max_solution_tokens,
                             stop_at_step=False)
    problems = [stream.next() for _ in range(cfg.problems)]
    per_call = 24
    labeled: list[LabeledPath] = []
    for lo in tqdm(range(0, len(problems), per_call), desc="prm labels", dynamic_ncols=True):
        batch = problems[lo:lo + per_call]
        prompts = [generator.prompt_ids(p.question) for p in batch]
        solutions = generator.expand(prompts, cfg.samples_per_problem, sample, generator=rng)
        paths = [(prob, prompt, steps, [0.0] * len(steps))
                 for prob, prompt, sols in zip(batch, prompts, solutions)
                 for steps in (split_steps(sol.text) for sol in sols) if steps]
        for prob, _, steps, labels in paths:
            if extract_boxed(steps[-1]) is not None:
                labels[-1] = float(answers_match(extract_boxed(steps[-1]), prob.answer))
        pending, depth = list(range(len(paths))), 0
        while pending:
            owners = [i for i in pending if depth < len(paths[i][2]) - 1
                      and extract_boxed(paths[i][2][depth]) is None]
            if not owners:
                break
            prefixes = [paths[i][1] + encode_steps(tok, paths[i][2][: depth + 1]) for i in owners]
            rollouts = generator.expand(prefixes, cfg.rollouts, rollout, generator=rng)
            pending = []
            for i, rolls in zip(owners, rollouts):
                gold = paths[i][0].answer
                fraction = sum(answers_match(extract_boxed(r.text), gold) for r in rolls) / len(rolls)
                paths[i][3][depth] = fraction
                if fraction > 0:
                    pending.append(i)
            depth += 1
        labeled.extend(LabeledPath(p.question, steps, labels) for p, _, steps, labels in paths)
        labeled.extend(contrastive_paths(generator, paths, cfg, rollout, rng, pick))
    return labeled


def contrastive_paths(generator: StepGenerator, paths: list, cfg: PRMTrainConfig, rollout: SamplingParams,
                      rng: torch.Generator, pick: random.Random) -> list[LabeledPath]:
    """For labelled paths, copies with one plausible step made wrong (``perturb_step``), labelled alike.

    Why: sampled paths rarely differ only in one number, so the PRM learnt to spot garbled text
    but not bad arithmetic (it scored ``15 + 4 = 29`` like ``15 + 4 = 19``). A copy keeps the steps
    before the changed one with their labels; the changed step's label is the fraction of K
    rollouts from it that reach the gold answer. When none does, one rollout becomes the rest of
    the path, its steps labelled 0 (first-error rule) — so the PRM also sees a slip carried
    through to a well-formed final answer, which is what best-of-N must catch.
    Off in the shipped recipe: measured once, at 500 problems and 400 optimiser steps, the held-out
    step AUROC was 0.750 (120 problems), under the first (plain fine-tuned) PRM's 0.805 there (the PRM
    card lists the other variants tried).
    """
    jobs = []
    for prob, prompt, steps, labels in paths:
        candidates = [j for j, step in enumerate(steps) if labels[j] > 0 and EQUATION.search(step)
                      and extract_boxed(step) is None]
        for j in pick.sample(candidates, min(cfg.perturbed_per_path, len(candidates))):
            jobs.append((prob, prompt, steps[:j] + [perturb_step(steps[j], pick)], labels[:j]))
    if not jobs:
        return []
    prefixes = [prompt + encode_steps(generator.tokenizer, steps) for _, prompt, steps, _ in jobs]
    out = []
    for (prob, _, steps, labels), rolls in zip(jobs, generator.expand(prefixes, cfg.rollouts, rollout, generator=rng)):
        fraction = sum(answers_match(extract_boxed(r.text), prob.answer) for r in rolls) / len(rolls)
        if fraction > 0:
            out.append(LabeledPath(prob.question, steps, labels + [fraction]))
        else:
            rest = split_steps(rolls[0].text)
            out.append(LabeledPath(prob.question, steps + rest, labels + [0.0] * (1 + len(rest))))
    return out


def load_or_label(generator: StepGenerator, cfg: PRMTrainConfig) -> list[LabeledPath]:
    """The labelled paths: from ``cfg.labels_cache`` when it holds a run of the same labelling recipe."""
    recipe = {k: str(getattr(cfg, k)) for k in ("seed", "problems", "samples_per_problem", "sample_temperature",
                                                 "rollout_temperature", "rollouts", "perturbed_per_path",
                                                 "max_solution_tokens", "policy_dir")}
    cache = cfg.labels_cache
    if cache is not None and cache.exists():
        try:
            data = json.loads(cache.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SystemExit(f"{cache} is not a labels cache ({err}); delete it to relabel") from None
        if not isinstance(data, dict) or data.get("recipe") != recipe:
            raise SystemExit(f"{cache} was labelled with another recipe ({data.get('recipe')}); "
                             "delete it or pass another --labels-cache")
        print(f"prm: labels from {cache}")
        return [LabeledPath(**p) for p in data["paths"]]
    paths = label_paths(generator, ProblemStream(cfg.seed + 1000), cfg)
    if cache is not None:
        cache.write_text(json.dumps({"recipe": recipe, "paths": [asdict(p) for p in paths]}), encoding="utf-8")
    return paths
