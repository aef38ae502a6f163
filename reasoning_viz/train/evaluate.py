"""``python -m reasoning_viz.train evaluate``: the bundled models' report card on the held-out set.

Per difficulty level and overall, for the student: greedy accuracy; sampled pass@1 at the app's
default temperature; coverage pass@k (unbiased estimator, Chen et al. 2021) for k = 1, 4, 16, 64 from
n samples; majority vote @16; best-of-16 chosen by the PRM (``last`` and ``min`` aggregation) and by
the student's own confidence (its lowest token probability on the path, ``SelfConfidence``); the step
AUROC of both scorers against the exact reference step labels (``reference_step_labels``); and the
larger model's greedy accuracy beside the student's.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..lab import pass_at_k
from ..models.generator import SamplingParams, StepGenerator
from ..models.loading import load_causal_lm
from ..models.presets import BUNDLED_LARGE, BUNDLED_PRM, BUNDLED_STUDENT, BUNDLED_TEMPERATURE
from ..models.scorers import MathShepherdPRM, SelfConfidence
from ..problems.grading import answers_match, extract_boxed, normalize_answer
from ..problems.tinygsm import LEVELS, load_test_set, reference_step_labels
from ..tree import aggregate
from .common import use_all_cores
from .labels import split_steps

KS = (1, 4, 16, 64)


@dataclass
class EvalConfig:
    student_dir: Path = BUNDLED_STUDENT
    large_dir: Path = BUNDLED_LARGE
    prm_dir: Path = BUNDLED_PRM
    samples: int = 64  # n, for pass@k
    group: int = 16  # samples per vote / best-of group
    temperature: float = BUNDLED_TEMPERATURE  # the app's default for the bundled student
    limit: int | None = None  # problems per level
    seed: int = 0
    problems_per_call: int = 8
    max_tokens: int = 160  # the longest gold solution is 124 tokens; longer samples are wrong anyway


def auroc(scores: list[float], labels: list[bool]) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged)."""
    s, y = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = y.sum(), (~y).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    order = s.argsort(kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


@dataclass
class LevelStats:
    greedy: list[bool] = field(default_factory=list)
    correct_counts: list[int] = field(default_factory=list)
    majority: list[bool] = field(default_factory=list)
    best_last: list[bool] = field(default_factory=list)
    best_min: list[bool] = field(default_factory=list)
    best_self: list[bool] = field(default_factory=list)
    large_greedy: list[bool] = field(default_factory=list)
    step_scores: list[float] = field(default_factory=list)
    self_scores: list[float] = field(default_factory=list)
    step_labels: list[bool] = field(default_factory=list)


def evaluate(cfg: EvalConfig) -> str:
    """Run the evaluation and return it as a Markdown table."""
    use_all_cores()
    if cfg.samples < max(KS) or cfg.group > cfg.samples:
        raise ValueError(f"need samples >= {max(KS)} and group <= samples")
    generator = StepGenerator(*load_causal_lm(cfg.student_dir), memory_budget_mb=4096)
    large = StepGenerator(*load_causal_lm(cfg.large_dir), memory_budget_mb=4096)
    prm = MathShepherdPRM(*load_causal_lm(cfg.prm_dir), batch_size=cfg.group)
    self_confidence = SelfConfidence(generator)
    rng = torch.Generator(device=generator.device).manual_seed(cfg.seed)
    problems = load_test_set()
    if cfg.limit:
        problems = [p for level in LEVELS for p in [q for q in problems if q.level == level][:cfg.limit]]
    stats = {level: LevelStats() for level in LEVELS}
    greedy = SamplingParams(temperature=0.0, max_step_tokens=cfg.max_tokens, stop_at_step=False)
    sampled = SamplingParams(temperature=cfg.temperature, max_step_tokens=cfg.max_tokens, stop_at_step=False)
    start = time.time()
    for lo in tqdm(range(0, len(problems), cfg.problems_per_call), desc="evaluate", dynamic_ncols=True):
        batch = problems[lo:lo + cfg.problems_per_call]
        prompts = [generator.prompt_ids(p.question) for p in batch]
        greedy_out = generator.expand(prompts, 1, greedy)
        large_out = large.expand([large.prompt_ids(p.question) for p in batch], 1, greedy)
        samples_out = generator.expand(prompts, cfg.samples, sampled, generator=rng)
        for prob, g, g_large, samples in zip(batch, greedy_out, large_out, samples_out):
            st = stats[prob.level]
            st.greedy.append(answers_match(extract_boxed(g[0].text), prob.answer))
            st.large_greedy.append(answers_match(extract_boxed(g_large[0].text), prob.answer))
            answers = [normalize_answer(extract_boxed(s.text)) for s in samples]
            right = [answers_match(a, prob.answer) for a in answers]
            st.correct_counts.append(sum(right))
            group = samples[: cfg.group]
            votes = Counter(a for a in answers[: cfg.group] if a is not None)
            st.majority.append(bool(votes) and answers_match(votes.most_common(1)[0][0], prob.answer))
            paths = [split_steps(s.text) or [""] for s in group]
            scores = prm.score(prob.question, paths)
            own = self_confidence.score(prob.question, paths)
            finished = [i for i in range(len(group)) if answers[i] is not None]  # as the app chooses
            for by, how, out in ((scores, "last", st.best_last), (scores, "min", st.best_min),
                                 (own, "min", st.best_self)):  # the student's lowest token probability
                best = max(finished, key=lambda i: aggregate(by[i], how), default=None)
                out.append(best is not None and right[best])
            for path, path_scores, own_scores in zip(paths, scores, own):
                st.step_scores.extend(path_scores)
                st.self_scores.extend(own_scores)
                st.step_labels.extend(reference_step_labels(prob, path))
            prm.reset()
    elapsed = time.time() - start
    return _table(stats, cfg, len(problems), elapsed)


def _row(name: str, st: LevelStats, cfg: EvalConfig) -> str:
    n = cfg.samples
    pass1 = np.mean([c / n for c in st.correct_counts])
    cov = [np.mean([pass_at_k(n, c, k) for c in st.correct_counts]) for k in KS]
    cells = [np.mean(st.greedy), pass1, *cov, np.mean(st.majority), np.mean(st.best_last), np.mean(st.best_min),
             np.mean(st.best_self)]
    aucs = [auroc(st.step_scores, st.step_labels), auroc(st.self_scores, st.step_labels)]
    return (f"| {name} | {len(st.greedy)} | " + " | ".join(f"{100 * x:.1f}" for x in cells)
            + "".join(f" | {a:.3f}" for a in aucs) + f" | {100 * np.mean(st.large_greedy):.1f} |")


def _table(stats: dict[int, LevelStats], cfg: EvalConfig, n_problems: int, elapsed: float) -> str:
    g = cfg.group
    header = ("| level | problems | student greedy | pass@1 | " + " | ".join(f"cov@{k}" for k in KS)
              + f" | maj@{g} | PRM best-of-{g} (last) | PRM best-of-{g} (min) | self-confidence best-of-{g} "
              "| PRM step AUROC | self-confidence step AUROC | large model greedy |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for level in LEVELS:
        if stats[level].greedy:
            lines.append(_row(str(level), stats[level], cfg))
    total = LevelStats()
    for st in stats.values():
        for f in total.__dataclass_fields__:
            getattr(total, f).extend(getattr(st, f))
    lines.append(_row("**all**", total, cfg))
    lines.append("")
    lines.append(f"Accuracies in %, on {n_problems} held-out problems; {cfg.samples} samples of the student per "
                 f"problem at temperature {cfg.temperature:g} (pass@1, coverage), the first {cfg.group} of them for "
                 f"the vote and best-of; both models' greedy answers at temperature 0; seed {cfg.seed}; "
                 f"{elapsed / 60:.1f} min.")
    return "\n".join(lines)
