"""Running a strategy: the context a strategy searches through, budgets, and ``run_strategy``.

A strategy only calls ``SearchContext.expand`` (generate and score children) and the tree's own
methods (prune, update, note). The context turns model output into tree nodes, keeps the totals,
enforces the caps and cancellation, and tells a listener (the UI) after every change.
"""

from __future__ import annotations

import dataclasses
import platform
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch

from .models.generator import SamplingParams, StepSample
from .models.pair import Models  # noqa: F401 (what a search runs with; imported from here by callers too)
from .problems.grading import answers_match, extract_boxed, normalize_answer, stated_answer
from .problems.tinygsm import domain_warning
from .tree import SearchTree


EVENTS_PER_NODE = 10  # ordinary runs log about one to three events per node


@dataclass
class Budget:
    """Caps on one run. A run that reaches one stops cleanly and says so in its record."""

    max_nodes: int = 2000  # the defaults here are the host's defaults too (service.HostLimits)
    max_tokens: int = 200_000
    max_seconds: float = 120.0

    @property
    def max_events(self) -> int:
        """The event log's cap, from the node cap: an MCTS that only re-visits finished paths appends an
        event per simulation without adding a node, and the record (memory) must stay bounded."""
        return EVENTS_PER_NODE * self.max_nodes

    def validate(self) -> None:
        # written as "not (x > 0)" so that NaN, which compares false with everything, is refused too
        if not (self.max_nodes >= 2 and self.max_tokens >= 1 and 0 < self.max_seconds < float("inf")):
            raise ValueError("budget caps must be positive and finite (max_nodes >= 2)")


SCORE_BATCH = 64  # paths per scorer call; the caps are checked between calls


class SearchStopped(Exception):
    """Raised inside a strategy when a cap is reached or the user cancels; the run ends cleanly."""


class SearchContext:
    """The strategy's handle on models, tree, budget and randomness for one run."""

    def __init__(self, tree: SearchTree, models: Models, budget: Budget, seed: int, gold: str | None,
                 on_update: Callable[["SearchContext"], None] | None = None,
                 cancel: threading.Event | None = None):
        self.tree, self.models, self.budget, self.gold = tree, models, budget, gold
        self.rng = torch.Generator(device=models.generator.device).manual_seed(seed)
        self.on_update = on_update
        self.cancel = cancel or threading.Event()
        self.started = time.perf_counter()
        self.policy_tokens = 0
        self.seconds_generating = 0.0
        self.seconds_scoring = 0.0
        self.samples: dict[int, StepSample] = {}  # runtime only: the raw sample behind each node
        prompt = models.generator.prompt_ids(tree.question, models.system_prompt)
        tree.token_ids[0] = prompt
        context = models.generator.context_length
        if context and len(prompt) >= context:
            raise ValueError(f"the question is {len(prompt)} tokens, over the model's context of {context}")

    # ---- budget ---------------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def scorer_tokens(self) -> int:
        return self.models.scorer.tokens_scored  # the run's own scorer (``run_strategy``)

    def check(self) -> None:
        """Raise ``SearchStopped`` when the user cancelled or the time cap is reached. ``expand`` calls
        it, the generator at every decode step and ``score`` between batches; a strategy calls it too
        in any loop that can go round without expanding (MCTS re-visits)."""
        if self.cancel.is_set():
            raise SearchStopped("cancelled by the user")
        if self.elapsed >= self.budget.max_seconds:
            raise SearchStopped(f"time cap reached ({self.budget.max_seconds:g} s)")
        if len(self.tree.events) >= self.budget.max_events:
            raise SearchStopped(f"event cap reached ({self.budget.max_events} events)")

    def _affordable(self, nodes: list[int], k: int, max_step_tokens: int) -> list[int]:
        """The nodes that can still be expanded within the caps (in order); raise if none."""
        self.check()
        room_nodes = (self.budget.max_nodes - len(self.tree)) // k
        room_tokens = (self.budget.max_tokens - self.policy_tokens) // (k * max_step_tokens)
        fit = min(len(nodes), room_nodes, room_tokens)
        if fit <= 0:
            which = "node" if room_nodes <= 0 else "token"
            cap = self.budget.max_nodes if which == "node" else self.budget.max_tokens
            raise SearchStopped(f"{which} cap reached ({cap})")
        return nodes[:fit]

    # ---- the one operation strategies need ---------------------------------------------------
    def expand(self, node_ids: list[int], k: int, params: SamplingParams, *, stage: str | None = None,
               first_tokens: list[list[int]] | None = None, what: str = "") -> list[list[int]]:
        """Generate ``k`` scored children under each node; returns the new ids per node.

        Expands fewer nodes than asked when a cap would be crossed, and raises ``SearchStopped``
        when none can be expanded.
        """
        nodes = self._affordable(list(node_ids), k, params.max_step_tokens)
        t0 = time.perf_counter()
        prefixes = [self.tree.path_token_ids(n) for n in nodes]
        forced = first_tokens[: len(nodes)] if first_tokens is not None else None
        samples = self.models.generator.expand(prefixes, k, params, generator=self.rng, first_tokens=forced,
                                               check=self.check)
        self.seconds_generating += time.perf_counter() - t0
        new_ids: list[list[int]] = []
        for node_id, children in zip(nodes, samples):
            self.policy_tokens += sum(len(c.token_ids) for c in children)
            label = what or f"Expanded node {node_id}"
            ids = self.tree.add_children(node_id, [self._node_fields(c, node_id) for c in children],
                                         f"{label}: {len(children)} new step(s) at depth "
                                         f"{self.tree.node(node_id).depth + 1}",
                                         token_ids=[c.token_ids for c in children], stage=stage)
            self.samples.update(zip(ids, children))
            new_ids.append(ids)
        self.score([i for ids in new_ids for i in ids])
        return new_ids

    def score(self, node_ids: list[int]) -> None:
        """Score the last step of each node's path with the run's scorer, in batches of
        ``SCORE_BATCH`` paths with the caps checked between them (scoring thousands can take long), and
        inside a batch by scorers that wait long (an engine, rollouts)."""
        if not node_ids:
            return
        t0 = time.perf_counter()
        paths = [self.tree.steps(n) for n in node_ids]
        scores: list[list[float]] = []
        stopped: SearchStopped | None = None
        for lo in range(0, len(paths), SCORE_BATCH):
            try:
                self.check()
                scores += self.models.scorer.score(self.tree.question, paths[lo:lo + SCORE_BATCH], gold=self.gold,
                                                   check=self.check)
            except SearchStopped as stop:
                stopped = stop
                break
        self.seconds_scoring += time.perf_counter() - t0
        if scores:
            self.tree.set_scores({n: s[-1] for n, s in zip(node_ids, scores)},
                                 f"Scored {len(scores)} new step(s) with {self.models.scorer.name}")
        if stopped is not None:  # what was generated stays in the tree, marked as never scored
            unscored = node_ids[len(scores):]
            self.tree.prune({n: f"not scored: {stopped}" for n in unscored},
                            f"{len(unscored)} new step(s) left unscored: the search stopped")
            raise stopped
        self.notify()

    def top_first_tokens(self, node_id: int, k: int) -> list[int]:
        """The ``k`` most likely next tokens after a node (for CoT-decoding's branching)."""
        return self.models.generator.top_tokens(self.tree.path_token_ids(node_id), k)

    def notify(self) -> None:
        if self.on_update is not None:
            self.on_update(self)

    # ---- turning samples into nodes -----------------------------------------------------------
    def _node_fields(self, sample: StepSample, parent: int) -> dict[str, Any]:
        text = sample.text.strip()
        answer = extract_boxed(text)
        if answer is None and sample.finish == "eos":  # the path ended: an answer stated in words counts
            answer = stated_answer(text)
        terminal = sample.finish == "eos" or answer is not None
        fields: dict[str, Any] = {
            "text": text, "num_tokens": len(sample.token_ids), "mean_logprob": sample.mean_logprob,
            "finish": sample.finish, "status": "terminal" if terminal else "open",
            "answer": normalize_answer(answer),
        }
        if terminal and answer is not None:
            fields["confidence"] = self._answer_confidence(sample, parent, normalize_answer(answer))
            if self.gold is not None:
                fields["correct"] = answers_match(answer, self.gold)
        return fields

    def _answer_confidence(self, sample: StepSample, parent: int, answer: str | None) -> float | None:
        """CoT-decoding's confidence: mean p(top-1) - p(top-2) over the answer's tokens.

        Taken where the path first *computes* the answer (an ``= N`` result), falling back to the
        boxed answer: the boxed line only copies the last result, and copying is near-certain on
        every path, so its margins would not tell paths apart.
        """
        tok = self.models.generator.tokenizer
        earlier = [self.samples[n.id] for n in self.tree.path(parent) if n.id in self.samples]
        for step in [*earlier, sample]:
            if not any(normalize_answer(m[1]) == answer for m in _RESULT.finditer(step.text)):
                continue  # a cheap test on the text before the per-token spans
            text, spans = _token_spans(tok, step.token_ids)
            for m in _RESULT.finditer(text):
                if normalize_answer(m[1]) == answer:
                    return _mean_margin(step, spans, m.start(1), m.end(1))
        text, spans = _token_spans(tok, sample.token_ids)
        open_at = text.rfind("\\boxed{")
        if open_at < 0:
            return None
        lo = open_at + len("\\boxed{")
        hi = text.find("}", lo)
        return _mean_margin(sample, spans, lo, len(text) if hi < 0 else hi)

    def totals(self) -> dict[str, Any]:
        wall = self.elapsed
        return {"policy_tokens": self.policy_tokens, "scorer_tokens": self.scorer_tokens,
                "nodes": len(self.tree), "seconds_total": round(wall, 3),
                "seconds_generating": round(self.seconds_generating, 3),
                "seconds_scoring": round(self.seconds_scoring, 3),
                "seconds_other": round(max(0.0, wall - self.seconds_generating - self.seconds_scoring), 3)}


_RESULT = re.compile(r"=\s*(-?\d[\d,]*(?:\.\d+)?)")  # the result of an equation in a step


def _token_spans(tokenizer, token_ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """The decoded text and each token's character span in it."""
    text, spans = "", []
    for i in range(len(token_ids)):
        start = len(text)
        text = tokenizer.decode(token_ids[: i + 1], skip_special_tokens=True)
        spans.append((start, len(text)))
    return text, spans


def _mean_margin(sample: StepSample, spans: list[tuple[int, int]], lo: int, hi: int) -> float | None:
    margins = [m for (a, b), m in zip(spans, sample.margins) if b > lo and a < hi]
    return sum(margins) / len(margins) if margins else None


def library_versions() -> dict[str, str]:
    import networkx
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "networkx": networkx.__version__}


class StrategySpec(Protocol):
    """What ``run_strategy`` needs of a strategy (``strategies.Strategy`` is one)."""

    name: str
    params: type
    run: Callable[[Any, Any], None]
    select: Callable[[Any, Any], Any]


def run_strategy(question: str, spec: StrategySpec, models: Models, params: Any = None, *, seed: int = 0,
                 budget: Budget | None = None, gold: str | int | None = None,
                 on_update: Callable[[SearchContext], None] | None = None,
                 cancel: threading.Event | None = None) -> SearchTree:
    """Run one strategy on one question; returns the complete record, with the answer selected.

    The strategy is passed in (``strategies.run_search`` looks it up by name), so this module never
    imports the strategies that import it."""
    strategy = spec.name
    question = (question or "").strip()
    if not question:
        raise ValueError("the question is empty")
    params = params if params is not None else spec.params()
    if not isinstance(params, spec.params):
        raise TypeError(f"{strategy} takes {spec.params.__name__}, got {type(params).__name__}")
    if params.temperature is None:  # the model's own default; the record shows the value used
        params = dataclasses.replace(params, temperature=models.temperature)
    params.validate()
    budget = budget or Budget()
    budget.validate()
    gold_text = None if gold is None or str(gold).strip() == "" else str(gold).strip()
    off_domain = domain_warning(question) if models.domain == "tinygsm" else None
    tree = SearchTree(question, run={
        "question": question, "gold": gold_text, "strategy": strategy, "params": asdict(params),
        "seed": seed, "budget": asdict(budget), "models": {"policy": models.policy_id, "scorer": models.scorer_id},
        "system_prompt": models.system_prompt, "versions": library_versions(),
        "engine": models.generator.describe(),
        "warnings": [off_domain] if off_domain else [],
    })
    if hasattr(models.scorer, "describe"):  # a PRM served by an engine (``EnginePRM``)
        tree.run["scorer_engine"] = models.scorer.describe()
    # the run's own scorer state (caches, token count): the same seed gives the same tree however
    # many other runs share the models at the same time
    models = dataclasses.replace(models, scorer=models.scorer.for_run())
    ctx = SearchContext(tree, models, budget, seed, gold_text, on_update, cancel)
    tree.run["stopped"] = None
    try:
        spec.run(ctx, params)
    except SearchStopped as stop:
        tree.run["stopped"] = str(stop)
        tree.note("stopped", f"Search stopped early: {stop}")
    selection = spec.select(tree, params)
    tree.run["selection"] = selection.to_json()
    if selection.node_id is not None:
        tree.select_path(selection.node_id, selection.detail)
    tree.run["totals"] = ctx.totals()
    ctx.notify()
    return tree
