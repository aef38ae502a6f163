"""The scaling lab: accuracy against compute, per strategy and difficulty, over many held-out problems.

One lab run is a grid of *cells*, each one search on one problem, cached on disk by everything that
decides its result (models, strategy, hyperparameters, seed, problem), so a repeated run is instant
and a changed one recomputes only what changed:

- ``greedy``: the policy's greedy chain (the baseline), and the larger preset's greedy chain;
- ``samples``: one best-of-N run at the largest budget. Best-of-k, the majority and the PRM-weighted
  vote at every smaller k are *estimated from its samples*: the mean over all k-subsets of the N
  samples (exactly, by a closed form for best-of-k, by enumeration when there are at most
  ``SUBSET_CAP`` subsets, else over ``SUBSET_CAP`` random ones, seeded), with the app's own rules and
  tie-breaks (``select.py``); coverage@k is the unbiased pass@k estimator (Chen et al. 2021);
- ``beam_search`` / ``dvts``: a separate search at every budget N (their trees are not prefixes of a
  bigger one).

``run_lab`` yields the result as cells finish, so a caller can draw the curves as they fill in. Each
cell also keeps its search's Stream-of-Search trace (``traces.py``), and the verified paths of the
sampled runs, so a finished lab run is training data too (``sft_records``, ``sos_records``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import itertools
import json
import os
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from math import comb
from pathlib import Path
from typing import Any

import numpy as np

from .models.loading import DEFAULT_PRESET, PRESETS
from .problems.grading import answers_match
from .problems.tinygsm import LEVELS, Problem, load_test_set
from .search import Budget, Models
from .strategies import STRATEGIES, run_search
from .traces import actions_text, sos_actions

SUBSET_CAP = 2000  # k-subsets enumerated (or sampled) per problem for the vote estimates
LAB_STRATEGIES = ("best_of_n", "self_consistency", "weighted_vote", "beam_search", "dvts")
STRATEGY_TITLES = {"best_of_n": "Best-of-N (PRM)", "self_consistency": "Majority vote",
                   "weighted_vote": "PRM-weighted vote", "beam_search": "PRM beam search", "dvts": "DVTS"}
SAMPLED = ("best_of_n", "self_consistency", "weighted_vote")  # estimated from one run's samples
DEFAULT_LARGE = "TinyGSM large model (no search)"
CACHE_DIR = Path(os.environ.get("RV_LAB_CACHE") or Path.home() / ".cache" / "reasoning_viz" / "lab")


# ---- estimators (pure) --------------------------------------------------------------------------
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k samples is correct) from c correct of n."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, have {n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def best_at_k(scores: list[float | None], correct: list[bool], k: int) -> float:
    """Mean over all k-subsets of whether the subset's best-scored answered sample is right (best-of-k).
    ``None`` scores are samples with no answer; ties go to the earlier sample (``select.best_score``)."""
    n = len(scores)
    order = sorted((i for i in range(n) if scores[i] is not None), key=lambda i: (-scores[i], i))
    # the subset's best is the answered sample of lowest rank in it: rank j is the lowest with
    # probability C(n-1-j, k-1) / C(n, k) (the other k-1 all rank below it; unanswered ones rank last)
    return sum(comb(n - 1 - j, k - 1) for j, i in enumerate(order) if correct[i]) / comb(n, k)


def subsets(n: int, k: int, seed: int = 0, cap: int = SUBSET_CAP) -> np.ndarray:
    """All k-subsets of range(n) as sorted rows if there are at most ``cap``, else ``cap`` random ones."""
    if comb(n, k) <= cap:
        return np.array(list(itertools.combinations(range(n), k)), dtype=int).reshape(-1, k)
    rng = random.Random(seed * 1_000_003 + n * 1009 + k)
    return np.array([sorted(rng.sample(range(n), k)) for _ in range(cap)], dtype=int)


def vote_at_k(answers: list[str | None], correct: list[bool], k: int, weights: list[float] | None = None,
              seed: int = 0, cap: int = SUBSET_CAP) -> float:
    """Mean over k-subsets (``subsets``) of whether the subset's vote is right: the most frequent answer,
    or with ``weights`` the answer of the largest summed weight; ties go to the answer found first, and
    a subset with no answer is wrong (``select.majority_vote`` / ``weighted_vote``)."""
    labels = sorted({a for a in answers if a is not None})
    if not labels:
        return 0.0
    ids = np.array([labels.index(a) if a is not None else -1 for a in answers])
    w = np.array([1.0 if weights is None else (weights[i] or 0.0) for i in range(len(answers))])
    right = np.array([any(correct[i] for i in range(len(answers)) if answers[i] == a) for a in labels])
    rows = subsets(len(answers), k, seed, cap)
    total = np.zeros((len(rows), len(labels)))
    first = np.full((len(rows), len(labels)), len(answers))
    for col in range(k)[::-1]:  # right to left, so the earliest sample of each answer is kept in ``first``
        sample = rows[:, col]
        has = ids[sample] >= 0
        r, a = np.nonzero(has)[0], ids[sample][has]
        np.add.at(total, (r, a), w[sample][has])
        first[r, a] = sample[has]
    present = first < len(answers)
    total = np.where(present, total, -np.inf)
    best = total.max(axis=1, keepdims=True)
    winner = np.where(present & (total == best), first, len(answers) + 1).argmin(axis=1)
    ok = right[winner] & present.any(axis=1)
    return float(ok.mean())


# ---- settings and cells ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LabSettings:
    """What one lab run covers. Budgets are N: samples for the sampled strategies, beams for the others."""

    preset: str = DEFAULT_PRESET
    large_preset: str | None = DEFAULT_LARGE  # its greedy answers, against the small model's search
    strategies: tuple[str, ...] = LAB_STRATEGIES
    budgets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    levels: tuple[int, ...] = LEVELS
    per_level: int = 10
    seed: int = 0

    def validate(self, max_n: int = 256, max_problems: int = 600) -> None:
        if self.preset not in PRESETS or (self.large_preset is not None and self.large_preset not in PRESETS):
            raise ValueError("Choose the models from the preset list.")
        bad = [s for s in self.strategies if s not in LAB_STRATEGIES]
        if bad or not self.strategies:
            raise ValueError(f"The lab compares {', '.join(LAB_STRATEGIES)}; choose at least one.")
        if not self.budgets or any(not isinstance(n, int) or n < 1 for n in self.budgets):
            raise ValueError("Budgets are whole numbers of samples (N) of at least 1.")
        if max(self.budgets) > max_n:
            raise ValueError(f"This host runs the lab up to N = {max_n}.")
        if not self.levels or any(lv not in LEVELS for lv in self.levels):
            raise ValueError(f"Levels are {', '.join(map(str, LEVELS))}.")
        if not 1 <= self.per_level <= 100:
            raise ValueError("Problems per level: between 1 and 100 (the held-out set has 100 a level).")
        if self.per_level * len(self.levels) > max_problems:
            raise ValueError(f"This host runs the lab on at most {max_problems} problems.")

    def problems(self) -> list[tuple[int, Problem]]:
        """(place in the held-out set, problem): the first ``per_level`` of each chosen level. A
        problem's seed is the run's seed plus its place, so adding problems leaves the others' cells alone."""
        chosen, count = [], {lv: 0 for lv in self.levels}
        for place, prob in enumerate(load_test_set()):
            if prob.level in count and count[prob.level] < self.per_level:
                count[prob.level] += 1
                chosen.append((place, prob))
        return chosen


@dataclass(frozen=True)
class Cell:
    """One search on one problem: ``kind`` is "greedy", "samples" or a strategy at one budget."""

    kind: str
    preset: str
    strategy: str
    params: dict
    place: int
    seed: int

    def key(self) -> str:
        p = PRESETS[self.preset]
        ident = {**dataclasses.asdict(self), "policy": model_fingerprint(p.policy),
                 "scorer": model_fingerprint(p.scorer), "scorer_kind": p.scorer_kind,
                 "temperature": p.temperature, "version": 3}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


_fingerprints: dict[tuple, str] = {}


def model_fingerprint(ref: str) -> str:
    """A hub id as it is; a local model by the bytes of its files (a retrained model is another model)."""
    path = Path(ref)
    if not path.exists():
        return ref
    files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file() and p.suffix != ".md")
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if stamp not in _fingerprints:
        digest = hashlib.sha256()
        for p in files:
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        _fingerprints[stamp] = digest.hexdigest()[:16]
    return _fingerprints[stamp]


class CellCache:
    """Finished cells as small gzipped JSON files under ``root``, one per cell key (a best-of-64 search's
    trace is about 90 KB of JSON, 9 KB gzipped)."""

    def __init__(self, root: str | Path = CACHE_DIR):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json.gz"

    def get(self, key: str) -> dict | None:
        try:
            return json.loads(gzip.decompress(self._path(key).read_bytes()))
        except (OSError, EOFError, ValueError, zlib.error):  # missing, or cut short: run it again
            return None

    def put(self, key: str, value: dict) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(gzip.compress(json.dumps(value).encode("utf-8"), mtime=0))
        tmp.replace(path)  # atomic: a reader never sees half a file


def plan(settings: LabSettings) -> list[tuple[Cell, Problem]]:
    """Every cell of a lab run, cheapest first (greedy, samples, then the searches by budget)."""
    problems = settings.problems()
    top = max(settings.budgets)
    cells: list[tuple[Cell, Problem]] = []
    for preset in [settings.preset] + ([settings.large_preset] if settings.large_preset else []):
        cells += [(Cell("greedy", preset, "cot", {"greedy": True}, place, settings.seed + place), prob)
                  for place, prob in problems]
    if any(s in SAMPLED for s in settings.strategies):
        cells += [(Cell("samples", settings.preset, "best_of_n", {"n": top}, place, settings.seed + place), prob)
                  for place, prob in problems]
    for n in sorted(settings.budgets):
        for strategy in ("beam_search", "dvts"):
            if strategy in settings.strategies:
                params = {"n": n, "beam_width": min(4, n)}
                cells += [(Cell(strategy, settings.preset, strategy, params, place, settings.seed + place), prob)
                          for place, prob in problems]
    return cells


def run_cell(cell: Cell, problem: Problem, models: Models, cancel: threading.Event | None = None) -> dict | None:
    """Search once and keep what the lab needs; ``None`` if the user stopped it (not cached). A search
    that reaches its budget is a result like any other (its record says so)."""
    params = STRATEGIES[cell.strategy].params(**cell.params)
    budget = Budget(max_nodes=20_000, max_tokens=2_000_000, max_seconds=3600.0)
    tree = run_search(problem.question, cell.strategy, models, params, seed=cell.seed, budget=budget,
                      gold=str(problem.answer), cancel=cancel)
    if cancel is not None and cancel.is_set():
        return None
    totals = tree.run["totals"]
    out: dict[str, Any] = {"tokens": totals["policy_tokens"], "scorer_tokens": totals["scorer_tokens"],
                           "sos": sos_actions(tree)}
    if cell.kind == "samples":
        ends = sorted((n for n in tree.nodes() if n.id != 0 and not tree.children(n.id)), key=lambda n: n.id)
        answered = [n.status == "terminal" and n.answer is not None for n in ends]  # one chain each
        out["samples"] = [{"answer": n.answer if ok else None, "correct": bool(ok and n.correct),
                           "score": tree.path_score(n.id, params.aggregation) if ok else None,
                           "tokens": sum(p.num_tokens for p in tree.path(n.id)[1:]),
                           **({"steps": tree.steps(n.id)} if ok and n.correct else {})}  # verified: SFT data
                          for n, ok in zip(ends, answered)]
    else:
        sel = tree.run["selection"]
        out["correct"] = bool(sel["node_id"] is not None and tree.node(sel["node_id"]).correct)
        out["answer"] = sel["answer"]
    return out


# ---- assembling a result ----------------------------------------------------------------------
def sample_estimates(samples: list[dict], k: int, seed: int) -> dict[str, float]:
    """One problem's estimates at budget k from its N samples (see the module's docstring)."""
    answers = [s["answer"] for s in samples]
    correct = [s["correct"] for s in samples]
    scores = [s["score"] for s in samples]
    return {"coverage": pass_at_k(len(samples), sum(correct), k), "best_of_n": best_at_k(scores, correct, k),
            "self_consistency": vote_at_k(answers, correct, k, seed=seed),
            "weighted_vote": vote_at_k(answers, correct, k, weights=scores, seed=seed),
            "tokens": k * float(np.mean([s["tokens"] for s in samples]))}  # expected tokens of k samples


def summarise(settings: LabSettings, cells: dict[str, dict], memo: dict | None = None) -> dict:
    """The lab's figures' data from the finished cells: per level ("all" too) and budget, each
    strategy's accuracy (%) and policy tokens per problem, coverage, the greedy baselines, and the
    best strategy per level and budget. Cells not finished yet are left out (counted in ``done``)."""
    problems = settings.problems()
    memo = {} if memo is None else memo  # (place, k) -> sample_estimates: a live run re-summarises often
    levels = [*settings.levels, "all"]
    budgets = sorted(settings.budgets)
    acc = {s: {str(lv): {} for lv in levels} for s in settings.strategies}
    coverage = {str(lv): {} for lv in levels}
    greedy: dict[str, dict[str, float]] = {}

    def level_mean(per_problem: dict[int, float], level, scale: float = 100) -> float | None:
        vals = [v for (place, prob) in problems if level == "all" or prob.level == level
                for v in [per_problem.get(place)] if v is not None]
        return round(scale * float(np.mean(vals)), 2) if vals else None

    for name, preset in (("small", settings.preset), ("large", settings.large_preset)):
        if preset is None:
            continue
        got = {place: float(c["correct"]) for place, _ in problems
               if (c := cells.get(Cell("greedy", preset, "cot", {"greedy": True}, place, settings.seed + place).key()))}
        greedy[name] = {str(lv): level_mean(got, lv) for lv in levels}
    top = max(budgets)
    samples = {place: c["samples"] for place, _ in problems
               if (c := cells.get(Cell("samples", settings.preset, "best_of_n", {"n": top}, place,
                                       settings.seed + place).key()))}
    for k in budgets:
        per: dict[str, dict[int, float]] = {m: {} for m in ("coverage", *SAMPLED, "tokens")}
        for place, ss in samples.items():
            if (place, k) not in memo:
                memo[place, k] = sample_estimates(ss, k, settings.seed + place)
            for m, v in memo[place, k].items():
                per[m][place] = v
        tok = per["tokens"]
        for lv in levels:
            coverage[str(lv)][str(k)] = level_mean(per["coverage"], lv)
            for s in SAMPLED:
                if s in settings.strategies and (a := level_mean(per[s], lv)) is not None:
                    acc[s][str(lv)][str(k)] = {"accuracy": a, "tokens": level_mean(tok, lv, 1)}
        for s in ("beam_search", "dvts"):
            if s not in settings.strategies:
                continue
            params = {"n": k, "beam_width": min(4, k)}
            got = {place: c for place, _ in problems
                   if (c := cells.get(Cell(s, settings.preset, s, params, place, settings.seed + place).key()))}
            for lv in levels:
                a = level_mean({p: float(c["correct"]) for p, c in got.items()}, lv)
                if a is not None:
                    t = level_mean({p: float(c["tokens"]) for p, c in got.items()}, lv, 1)
                    acc[s][str(lv)][str(k)] = {"accuracy": a, "tokens": t}
    best = {str(lv): {str(k): max(((acc[s][str(lv)][str(k)]["accuracy"], -i, s)  # ties: the first listed
                                   for i, s in enumerate(settings.strategies) if str(k) in acc[s][str(lv)]),
                                  default=(None, 0, None))[::2]
                      for k in budgets} for lv in levels}
    envelope = {lv: {k: {"strategy": s, "accuracy": a} for k, (a, s) in row.items() if s} for lv, row in best.items()}
    return {"version": 1, "settings": dataclasses.asdict(settings), "problems": len(problems),
            "levels": [str(lv) for lv in levels], "budgets": budgets, "accuracy": acc, "coverage": coverage,
            "greedy": greedy, "envelope": envelope,
            "estimated": [s for s in SAMPLED if s in settings.strategies] + ["coverage"]}


def run_lab(settings: LabSettings, models_for: Callable[[str], Models], cache: CellCache | None = None,
            cancel: threading.Event | None = None, min_interval: float = 2.0,
            slot: Callable[[], Any] = contextlib.nullcontext) -> Iterator[tuple[dict, int, int]]:
    """Run (or read from the cache) every cell; yield (summary so far, cells done, cells in all) first,
    then at most every ``min_interval`` seconds as cells finish, and once at the end. ``cancel`` stops
    the search under way (its cell is not kept) and the run. Each search runs inside ``slot()`` (a
    host's limit on searches at once: a long lab run takes turns with other users' searches)."""
    cache = cache or CellCache()
    memo: dict = {}
    todo = plan(settings)
    done: dict[str, dict] = {}
    missing = []
    for cell, prob in todo:
        key = cell.key()
        if (hit := cache.get(key)) is not None:
            done[key] = hit
        else:
            missing.append((cell, prob, key))
    yield summarise(settings, done, memo), len(done), len(todo)
    last = time.monotonic()
    for i, (cell, prob, key) in enumerate(missing):  # noqa: B007
        if cancel is not None and cancel.is_set():
            break
        models = models_for(cell.preset)
        with slot():
            result = run_cell(cell, prob, models, cancel)
        if result is None:
            break
        cache.put(key, result)
        done[key] = result
        if time.monotonic() - last >= min_interval and i < len(missing) - 1:
            last = time.monotonic()
            yield summarise(settings, done, memo), len(done), len(todo)
    if missing:
        yield summarise(settings, done, memo), len(done), len(todo)


def sft_records(settings: LabSettings, cache: CellCache | None = None) -> list[dict]:
    """A finished lab run's verified paths as chat-format SFT records (the shape of ``traces.sft_records``):
    every right sample of its best-of-N runs, each distinct path of a problem once, from the cache."""
    cache = cache or CellCache()
    records = []
    for cell, prob in plan(settings):
        if cell.kind != "samples" or (found := cache.get(cell.key())) is None:
            continue
        seen = set()
        for i, sample in enumerate(found["samples"]):
            steps = tuple(sample.get("steps") or ())
            if steps and steps not in seen:
                seen.add(steps)
                records.append({"messages": [{"role": "user", "content": prob.question},
                                             {"role": "assistant", "content": "\n\n".join(steps)}],
                                "answer": sample["answer"], "source": "verified", "problem": prob.id,
                                "sample": i, "score": sample["score"], "strategy": "best_of_n"})
    return records


def sos_records(settings: LabSettings, cache: CellCache | None = None) -> list[dict]:
    """A lab run's searches (those in the cache) as Stream-of-Search traces, one record per search: which
    search it was, whether its answer is right, the trace's actions and its text (``traces.py``)."""
    cache = cache or CellCache()
    records = []
    for cell, prob in plan(settings):
        if (found := cache.get(cell.key())) is None:
            continue
        answer = next((a.get("answer") for a in found["sos"] if a["action"] == "answer"), None)
        records.append({"problem": prob.id, "level": prob.level, "kind": cell.kind, "strategy": cell.strategy,
                        "params": cell.params, "preset": cell.preset, "seed": cell.seed, "answer": answer,
                        "correct": answer is not None and answers_match(answer, str(prob.answer)),
                        "actions": found["sos"], "text": actions_text(found["sos"])})
    return records
