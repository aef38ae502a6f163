"""Seeded trees of every strategy, compared with trees recorded before a refactor of the search code.

A refactor of the models/search/strategy code must not change what a seed gives. Each recorded entry
is a fingerprint of the whole tree record (not wall-clock totals or library versions): a hash of
everything but the numbers with a fraction (nodes, texts, token ids, events, selection), and those
numbers themselves, compared within 1e-4. Not a hash of rounded numbers: another CPU's last bits can
tip a score across a rounding boundary (one of these trees did, between two machines), so they are
compared with a tolerance instead; the numbers written into texts (``score 0.391``) are left out of
the hash for the same reason, and are checked through the scores they print.

When the bundled models themselves change (their weights, not the code), re-record:
``RV_RECORD_TREES=1 python -m pytest tests/test_recorded_trees.py``, and say so in the commit.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path

import pytest

from reasoning_viz.problems.tinygsm import load_test_set
from reasoning_viz.search import Budget
from reasoning_viz.strategies import STRATEGIES, run_search

RECORD = Path(__file__).parent / "data" / "recorded_trees.json"
PROBLEMS = ("test-L2-0001", "test-L4-0002")  # a short and a longer chain, both held out
SMALL = {"n": 4, "beam_width": 2, "simulations": 6, "width": 2, "k": 3}
BUDGET = Budget(max_nodes=120, max_tokens=6000)


DECIMAL_IN_TEXT = re.compile(r"\d+\.\d+")


def _without_floats(value, floats: list[float]):
    """``value`` with every float moved to ``floats`` (in a fixed order) and every decimal in a text
    masked."""
    if isinstance(value, float):
        floats.append(value)
        return "<float>"
    if isinstance(value, str):
        return DECIMAL_IN_TEXT.sub("<decimal>", value)
    if isinstance(value, dict):
        return {k: _without_floats(value[k], floats) for k in sorted(value)}
    if isinstance(value, list):
        return [_without_floats(v, floats) for v in value]
    return value


def fingerprint(tree) -> dict:
    data = tree.to_json()
    for key in ("totals", "versions"):  # wall-clock seconds and installed versions differ by machine
        data["run"].pop(key, None)
    floats: list[float] = []
    text = json.dumps(_without_floats(data, floats), sort_keys=True)
    return {"nodes": len(tree), "answer": tree.run["selection"]["answer"],
            "sha256": hashlib.sha256(text.encode()).hexdigest(), "floats": [round(x, 6) for x in floats]}


def same_tree(got: dict, recorded: dict) -> bool:
    return (got["sha256"] == recorded["sha256"] and len(got["floats"]) == len(recorded["floats"])
            and all(math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-4) for a, b in zip(got["floats"], recorded["floats"])))


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
        RECORD.write_text(json.dumps(got, sort_keys=True).replace('}, "', '},\n "') + "\n", encoding="utf-8")
        pytest.skip(f"recorded {len(got)} trees to {RECORD.name}")
    recorded = json.loads(RECORD.read_text(encoding="utf-8"))
    assert set(got) == set(recorded), "a strategy or problem was added or removed: re-record (see the docstring)"
    changed = [f"{key}: {recorded[key]['nodes']} nodes, answer {recorded[key]['answer']} -> "
               f"{got[key]['nodes']} nodes, answer {got[key]['answer']}"
               for key in sorted(got) if not same_tree(got[key], recorded[key])]
    assert not changed, "seeded trees changed:\n" + "\n".join(changed)


def test_the_comparison_forgives_last_bits_and_nothing_else():
    recorded = {"sha256": "abc", "floats": [0.46944989, -12.5]}
    assert same_tree({"sha256": "abc", "floats": [0.46945011, -12.5000001]}, recorded)  # across a rounding edge
    assert not same_tree({"sha256": "abc", "floats": [0.4697, -12.5]}, recorded)  # a score moved
    assert not same_tree({"sha256": "abd", "floats": [0.46944989, -12.5]}, recorded)  # a text or id changed
    assert not same_tree({"sha256": "abc", "floats": [0.46944989]}, recorded)  # a number went missing
