"""#23: the scaling lab's estimators, its cell cache, and its agreement with the app's selection rules."""

from __future__ import annotations

import itertools
import json
from math import comb

import pytest

from reasoning_viz.lab import (CellCache, LabSettings, best_at_k, pass_at_k, plan, run_cell, run_lab, subsets,
                               vote_at_k)
from reasoning_viz.render.lab import accuracy_figure, coverage_figure, lab_html, lab_markdown, small_vs_large_figure
from reasoning_viz.select import best_score, majority_vote, weighted_vote
from reasoning_viz.strategies import STRATEGIES, run_search

# four samples: answers, whether each is right, their PRM path scores (None: no answer)
ANSWERS = ["3", "5", "3", None]
CORRECT = [True, False, True, False]
SCORES = [0.2, 0.9, 0.4, None]


def test_coverage_is_the_unbiased_pass_at_k_on_hand_computed_cases():
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 3, 3) == 1.0  # none right; too few wrong to fill k
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_the_estimates_at_k_are_means_over_all_k_subsets_on_a_hand_computed_case():
    # k=2: the six pairs {0,1} {0,2} {0,3} {1,2} {1,3} {2,3}
    # best-of-2: 5(0.9) wrong, right, right, wrong, wrong, right            -> 3/6
    # majority: tie 3-5 goes to the first found (3) right, right, right, tie -> 5 wrong, wrong, right -> 4/6
    # weighted: 0.9 > 0.2 wrong, right, right, wrong, wrong, right          -> 3/6
    assert best_at_k(SCORES, CORRECT, 2) == pytest.approx(3 / 6)
    assert vote_at_k(ANSWERS, CORRECT, 2) == pytest.approx(4 / 6)
    assert vote_at_k(ANSWERS, CORRECT, 2, weights=SCORES) == pytest.approx(3 / 6)
    assert best_at_k(SCORES, CORRECT, 1) == pytest.approx(2 / 4) == vote_at_k(ANSWERS, CORRECT, 1)
    assert best_at_k(SCORES, CORRECT, 4) == 0.0 and vote_at_k(ANSWERS, CORRECT, 4) == 1.0


def _brute(answers, correct, scores, k, rule):
    """The rule applied to every k-subset, written out plainly (ties: the earliest sample / answer)."""
    wins = []
    for subset in itertools.combinations(range(len(answers)), k):
        got = [i for i in subset if answers[i] is not None]
        if not got:
            wins.append(False)
            continue
        if rule == "best":
            wins.append(correct[max(got, key=lambda i: (scores[i], -i))])
            continue
        totals: dict[str, float] = {}
        for i in got:
            totals[answers[i]] = totals.get(answers[i], 0) + (scores[i] if rule == "weighted" else 1)
        winner = max(totals, key=lambda a: (totals[a], -min(i for i in got if answers[i] == a)))
        wins.append(any(correct[i] for i in got if answers[i] == winner))
    return sum(wins) / len(wins)


def test_the_estimators_equal_the_brute_force_subset_mean_on_random_cases():
    import random

    rng = random.Random(7)
    for _ in range(40):
        n = rng.randint(1, 9)
        answers = [rng.choice(["1", "2", "3", None]) for _ in range(n)]
        correct = [a == "2" for a in answers]
        scores = [round(rng.random(), 1) if a is not None else None for a in answers]  # rounded: ties happen
        for k in range(1, n + 1):
            assert best_at_k(scores, correct, k) == pytest.approx(_brute(answers, correct, scores, k, "best"))
            assert vote_at_k(answers, correct, k) == pytest.approx(_brute(answers, correct, scores, k, "majority"))
            assert vote_at_k(answers, correct, k, weights=scores) == pytest.approx(
                _brute(answers, correct, scores, k, "weighted"))


def test_beyond_the_cap_subsets_are_sampled_with_a_seed():
    assert len(subsets(6, 3)) == comb(6, 3)  # enumerated
    rows = subsets(64, 8, seed=3, cap=50)
    assert rows.shape == (50, 8) and (rows[:, 1:] > rows[:, :-1]).all()  # sorted, no repeats
    assert (rows == subsets(64, 8, seed=3, cap=50)).all() and not (rows == subsets(64, 8, seed=4, cap=50)).all()


def test_at_full_n_the_estimates_are_the_apps_own_selection_on_that_run(bundled_models):
    """With k = N there is one subset, the whole run: best-of-N and both votes must pick what
    select.py picks on the recorded tree."""
    settings = LabSettings(strategies=("best_of_n",), budgets=(6,), levels=(4,), per_level=1, large_preset=None)
    (cell, problem), = [c for c in plan(settings) if c[0].kind == "samples"]
    samples = run_cell(cell, problem, bundled_models)["samples"]
    tree = run_search(problem.question, "best_of_n", bundled_models, STRATEGIES["best_of_n"].params(n=6),
                      seed=cell.seed, gold=str(problem.answer))
    answers = [s["answer"] for s in samples]
    correct = [s["correct"] for s in samples]
    scores = [s["score"] for s in samples]
    assert len(samples) == 6
    for rule, estimate in ((best_score, best_at_k(scores, correct, 6)), (majority_vote, vote_at_k(answers, correct, 6)),
                           (weighted_vote, vote_at_k(answers, correct, 6, weights=scores))):
        sel = rule(tree)
        assert estimate == float(sel.node_id is not None and bool(tree.node(sel.node_id).correct)), rule.__name__


def test_the_cache_returns_stored_cells_for_the_same_settings_and_recomputes_for_others(bundled_models, tmp_path):
    calls = []

    def models_for(name):
        calls.append(name)
        return bundled_models

    settings = LabSettings(strategies=("best_of_n", "self_consistency", "beam_search"), budgets=(1, 2), levels=(1,),
                           per_level=2, large_preset=None)
    cache = CellCache(tmp_path)
    first = list(run_lab(settings, models_for, cache))
    cells = len(plan(settings))
    assert len(calls) == cells and first[-1][1:] == (cells, cells)
    calls.clear()
    again = list(run_lab(settings, models_for, cache))
    assert calls == [] and len(again) == 1 and again[0][0] == first[-1][0]  # instant, same numbers
    more = LabSettings(**{**settings.__dict__, "per_level": 3})  # one more problem: only its cells run
    list(run_lab(more, models_for, cache))
    assert len(calls) == len(plan(more)) - cells
    calls.clear()
    reseeded = LabSettings(**{**settings.__dict__, "seed": 5})
    list(run_lab(reseeded, models_for, cache))
    assert len(calls) == cells


def test_the_cell_cache_reads_back_what_it_wrote_and_treats_a_damaged_file_as_missing(tmp_path):
    cache = CellCache(tmp_path)
    value = {"tokens": 12, "sos": [{"action": "score", "scores": {"3": 0.5}}]}
    cache.put("ab" + "0" * 62, value)
    assert cache.get("ab" + "0" * 62) == value and cache.get("cd" + "0" * 62) is None
    (path,) = tmp_path.rglob("*.json.gz")
    path.write_bytes(path.read_bytes()[:-9])  # cut short, as by a full disk
    assert cache.get("ab" + "0" * 62) is None
    path.write_bytes(b"not gzip at all")
    assert cache.get("ab" + "0" * 62) is None


def test_a_stopped_lab_run_keeps_what_finished_and_caches_no_partial_cell(bundled_models, tmp_path):
    import threading

    stop = threading.Event()
    settings = LabSettings(strategies=("beam_search",), budgets=(1, 2), levels=(1,), per_level=2, large_preset=None)
    seen = []
    for summary, done, total in run_lab(settings, lambda _: bundled_models, CellCache(tmp_path), stop, min_interval=0):
        seen.append(done)
        if done >= 2:
            stop.set()
    assert seen[-1] == 2 < len(plan(settings))
    assert len(list(tmp_path.rglob("*.json.gz"))) == 2


SUMMARY = {"version": 1, "settings": {"preset": "p"}, "problems": 2, "levels": ["1", "all"], "budgets": [1, 4],
           "accuracy": {"best_of_n": {"1": {"1": {"accuracy": 50.0, "tokens": 10}, "4": {"accuracy": 90.0, "tokens": 40}},
                                      "all": {"1": {"accuracy": 50.0, "tokens": 10}, "4": {"accuracy": 90.0, "tokens": 40}}},
                        "beam_search": {"1": {"1": {"accuracy": 60.0, "tokens": 11}, "4": {"accuracy": 70.0, "tokens": 45}},
                                        "all": {"1": {"accuracy": 60.0, "tokens": 11}, "4": {"accuracy": 70.0, "tokens": 45}}}},
           "coverage": {"1": {"1": 50.0, "4": 95.0}, "all": {"1": 50.0, "4": 95.0}},
           "greedy": {"small": {"1": 55.0, "all": 55.0}, "large": {"1": 80.0, "all": 80.0}},
           "envelope": {"1": {"1": {"strategy": "beam_search", "accuracy": 60.0}, "4": {"strategy": "best_of_n", "accuracy": 90.0}},
                        "all": {"1": {"strategy": "beam_search", "accuracy": 60.0}, "4": {"strategy": "best_of_n", "accuracy": 90.0}}},
           "estimated": ["best_of_n", "coverage"]}


def test_the_lab_figures_and_tables_draw_a_summary():
    fig = accuracy_figure(SUMMARY, "all")
    assert [t.name for t in fig.data] == ["Best-of-N (PRM) (estimated)", "PRM beam search"]
    assert list(fig.data[0].y) == [50.0, 90.0] and list(accuracy_figure(SUMMARY, "1", "tokens").data[1].x) == [11, 45]
    assert [t.name for t in coverage_figure(SUMMARY, "all").data][0].startswith("coverage@k")
    bars = small_vs_large_figure(SUMMARY)
    assert [list(b.y) for b in bars.data] == [[55.0], [90.0], [80.0]]
    text = lab_markdown(SUMMARY)
    assert "| Best-of-N (PRM) | 50.0 | 90.0 |" in text and "| coverage@N | 50.0 | 95.0 |" in text
    assert "| level 1 | PRM beam search 60 | Best-of-N (PRM) 90 |" in text
    page = lab_html(SUMMARY)
    assert page.count("plotly.js") >= 1 and json.dumps(SUMMARY["settings"]) not in page


def test_a_lab_runs_verified_paths_become_sft_records(bundled_models, tmp_path):
    from reasoning_viz.lab import sft_records
    from reasoning_viz.problems.grading import answers_match

    settings = LabSettings(strategies=("best_of_n",), budgets=(8,), levels=(3,), per_level=2, large_preset=None)
    cache = CellCache(tmp_path)
    list(run_lab(settings, lambda _: bundled_models, cache))
    samples = [cache.get(c.key())["samples"] for c, _ in plan(settings) if c.kind == "samples"]
    records = sft_records(settings, cache)
    distinct = sum(len({tuple(s["steps"]) for s in ss if s["correct"]}) for ss in samples)
    assert len(records) == distinct > 0
    gold = {p.id: p.answer for _, p in settings.problems()}
    assert all(answers_match(r["answer"], str(gold[r["problem"]])) for r in records)
    paths = {"\n\n".join(s["steps"]) for ss in samples for s in ss if s["correct"]}
    assert {r["messages"][1]["content"] for r in records} == paths


def test_a_lab_runs_searches_become_stream_of_search_traces(bundled_models, tmp_path):
    """#23: every cached search of a lab run is one Stream-of-Search record, and its trace is the one the
    same search's tree gives (``traces.sos_actions``), read back from the cache."""
    from reasoning_viz.lab import sos_records
    from reasoning_viz.traces import sos_actions, sos_text

    settings = LabSettings(strategies=("best_of_n", "beam_search"), budgets=(2,), levels=(2,), per_level=1,
                           large_preset=None)
    cache = CellCache(tmp_path)
    assert sos_records(settings, cache) == []  # nothing run yet
    list(run_lab(settings, lambda _: bundled_models, cache))
    records = sos_records(settings, cache)
    cells = plan(settings)
    assert [(r["kind"], r["strategy"], r["params"]) for r in records] == [(c.kind, c.strategy, c.params) for c, _ in cells]
    for record, (cell, problem) in zip(records, cells):
        tree = run_search(problem.question, cell.strategy, bundled_models, STRATEGIES[cell.strategy].params(**cell.params),
                          seed=cell.seed, gold=str(problem.answer))
        assert record["actions"] == json.loads(json.dumps(sos_actions(tree)))  # as JSON keeps it
        assert record["text"] == sos_text(tree)
        chosen = tree.run["selection"]["node_id"]
        assert record["correct"] == bool(chosen is not None and tree.node(chosen).correct)
        assert record["problem"] == problem.id and record["text"].startswith(f"Question: {problem.question}")
