"""Record the gallery: one run of every strategy on curated held-out problems, into assets/runs/.

    python scripts/record_gallery.py

Deterministic (fixed seeds, default hyperparameters, the bundled models), so re-running it
reproduces the committed files except for the wall-clock timings they record.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reasoning_viz.models.loading import DEFAULT_PRESET, load_preset  # noqa: E402
from reasoning_viz.problems.tinygsm import load_test_set  # noqa: E402
from reasoning_viz.strategies import run_search  # noqa: E402
from reasoning_viz.service import RUNS_DIR  # noqa: E402
from reasoning_viz.strategies import STRATEGIES  # noqa: E402

# (strategy, held-out problem id): mid-difficulty problems, where search visibly matters
CURATED = [("cot", "test-L3-0001"), ("best_of_n", "test-L4-0002"), ("self_consistency", "test-L4-0002"),
           ("cot_decoding", "test-L3-0001"), ("beam_search", "test-L4-0002"), ("dvts", "test-L4-0002"),
           ("mcts", "test-L3-0001"), ("fast_slow", "test-L5-0003")]


def main() -> None:
    problems = {p.id: p for p in load_test_set()}
    models = load_preset(DEFAULT_PRESET)
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    for strategy, pid in CURATED:
        problem = problems[pid]
        tree = run_search(problem.question, strategy, models, STRATEGIES[strategy].params(), seed=0,
                          gold=str(problem.answer))
        path = RUNS_DIR / f"{strategy}-{pid}.json"
        tree.save(path)
        sel = tree.run["selection"]
        print(f"{strategy:17s} {pid}: {len(tree):4d} nodes, answer {sel['answer']} (gold {problem.answer}) -> {path.name}")


if __name__ == "__main__":
    main()
