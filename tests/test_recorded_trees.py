"""Seeded trees of every strategy, compared with trees recorded before a refactor of the search code.

A refactor of the models/search/strategy code must not change what a seed gives. Each recorded entry
is a fingerprint of the whole tree record (nodes, texts, token ids, scores to 4 decimals, events,
selection; not wall-clock totals or library versions, and floats rounded so that another CPU's last
bits do not count), with the node count and answer kept readable for the failure message.

When the bundled models themselves change (their weights, not the code), re-record:
``RV_RECORD_TREES=1 python -m pytest tests/test_recorded_trees.py``, and say so in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from reasoning_viz.problems.tinygsm import load_test_set
from reasoning_viz.search import Budget
from reasoning_viz.strategies import STRATEGIES, run_search

RECORD = Path(__file__).parent / "data" / "recorded_trees.json"
PROBLEMS = ("test-L2-0001", "test-L4-0002")  # a short and a longer chain, both held out
SMALL = {"n": 4, "beam_width": 2, "simulations": 6, "width": 2, "k": 3}
BUDGET = Budget(max_nodes=120, max_tokens=6000)


def _rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def fingerprint(tree) -> dict:
    data = tree.to_json()
    for key in ("totals", "versions"):  # wall-clock seconds and installed versions differ by machine
        data["run"].pop(key, None)
    text = json.dumps(_rounded(data), sort_keys=True)
    return {"nodes": len(tree), "answer": tree.run["selection"]["answer"],
            "sha256": hashlib.sha256(text.encode()).hexdigest()}


def _trees(models):
    problems = {p.id: p for p in load_test_set()}
    for name, spec in STRATEGIES.items():
        fields = spec.params.__dataclass_fields__
        params = spec.params(**{k: v for k, v in SMALL.items() if k in fields})
        for pid in PROBLEMS:
            p = problems[pid]
            yield f"{name}/{pid}", run_search(p.question, name, models, params, seed=7, gold=p.answer,
                                              budget=BUDGET)


def test_seeded_trees_match_the_recorded_ones(bundled_models):
    got = {key: fingerprint(tree) for key, tree in _trees(bundled_models)}
    if os.environ.get("RV_RECORD_TREES") == "1":
        RECORD.parent.mkdir(exist_ok=True)
        RECORD.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        pytest.skip(f"recorded {len(got)} trees to {RECORD.name}")
    recorded = json.loads(RECORD.read_text(encoding="utf-8"))
    assert set(got) == set(recorded), "a strategy or problem was added or removed: re-record (see the docstring)"
    changed = [f"{key}: {recorded[key]['nodes']} nodes, answer {recorded[key]['answer']} -> "
               f"{got[key]['nodes']} nodes, answer {got[key]['answer']}"
               for key in sorted(got) if got[key] != recorded[key]]
    assert not changed, "seeded trees changed:\n" + "\n".join(changed)
