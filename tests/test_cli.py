import json
import re
import subprocess
import sys
from html import escape as html_escape
from pathlib import Path

import pytest

from reasoning_viz.cli import main
from reasoning_viz.tree import SearchTree

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Leo saves 20 dollars. He earns 7 more dollars. How many dollars does Leo have now?"


def test_solve_writes_tree_and_offline_html(tmp_path, capsys):
    out_json, out_html = tmp_path / "t.json", tmp_path / "t.html"
    assert main(["solve", QUESTION, "--strategy", "beam_search", "--set", "n=4", "--set", "beam_width=2",
                 "--gold", "27", "--json", str(out_json), "--html", str(out_html)]) == 0
    printed = capsys.readouterr().out
    tree = SearchTree.load(out_json)
    assert f"answer: {tree.run['selection']['answer']}" in printed
    assert tree.run["params"]["n"] == 4 and tree.run["gold"] == "27"
    html = out_html.read_text(encoding="utf-8")
    assert "Plotly.newPlot" in html and not re.search(r"<script[^>]+src=", html)  # plotly.js inlined, nothing fetched
    # the page carries the question, the answer, the chosen path and the legend, not only the figure
    assert html_escape(QUESTION) in html and f"<b>Answer:</b> {tree.run['selection']['answer']}" in html
    assert "The chosen path" in html and '"final answer"' in html and "80vh" in html


def test_eval_prints_a_table(capsys):
    argv = ["eval", "--strategy", "cot:greedy=false,self_consistency", "--n", "4", "--levels", "1", "--limit", "2",
            "--set", "vote=weighted"]  # a shared --set goes to the strategies that take it
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 held-out problems (levels 1), N=4" in out
    rows = [line for line in out.splitlines() if line.startswith("| Chain of thought (greedy=false) |") or
            line.startswith("| Self-consistency vote |")]
    assert len(rows) == 2 and all(len(row.split("|")) == 7 for row in rows)  # one level: no level columns


def test_eval_counts_each_level_and_the_whole(capsys, bundled_models):
    from reasoning_viz.problems.tinygsm import load_test_set
    from reasoning_viz.strategies import run_search

    assert main(["eval", "--strategy", "cot", "--levels", "1,6", "--limit", "3"]) == 0
    header, _, row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert "| level 1 | level 6 |" in header
    cells = [c.strip() for c in row.split("|")[1:-1]]
    problems = [p for level in (1, 6) for p in [q for q in load_test_set() if q.level == level][:3]]
    right = []
    for i, p in enumerate(problems):  # the seeds eval gives each problem, in its order
        tree = run_search(p.question, "cot", bundled_models, seed=i, gold=str(p.answer))
        chosen = tree.run["selection"]["node_id"]
        right.append(chosen is not None and bool(tree.node(chosen).correct))
    assert cells[:4] == ["Chain of thought", f"{100 * sum(right) / 6:.1f}", f"{100 * sum(right[:3]) / 3:.1f}",
                         f"{100 * sum(right[3:]) / 3:.1f}"]


def test_eval_all_names_every_strategy_and_the_sampled_baseline():
    from reasoning_viz.cli import ALL_EVAL_ROWS, parse_eval_rows
    from reasoning_viz.strategies import STRATEGIES

    rows = parse_eval_rows("all")
    assert {name for name, _ in rows} == set(STRATEGIES)
    assert ("cot", ["greedy=false"]) in rows and len(rows) == len(ALL_EVAL_ROWS)
    with pytest.raises(SystemExit, match="unknown strategy 'nope'"):
        parse_eval_rows("cot,nope")
    with pytest.raises(SystemExit, match="none of the chosen strategies takes 'beam_width'"):
        main(["eval", "--strategy", "cot,best_of_n", "--set", "beam_width=2", "--limit", "1"])
    with pytest.raises(SystemExit, match="cot takes"):
        main(["eval", "--strategy", "cot:beam_width=2", "--limit", "1"])


def test_lab_writes_its_data_tables_and_figures_and_refuses_bad_settings(tmp_path, capsys):
    args = ["lab", "--strategies", "best_of_n,beam_search", "--budgets", "1,2", "--levels", "2", "--per-level", "1",
            "--large-preset", "none", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
            "--html", str(tmp_path / "lab.html")]
    assert main([*args, "--sft", str(tmp_path / "sft.jsonl"), "--sos", str(tmp_path / "sos.jsonl")]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "lab.json").read_text())
    assert summary["budgets"] == [1, 2] and summary["problems"] == 1 and set(summary["accuracy"]) == {"best_of_n", "beam_search"}
    beam = summary["accuracy"]["beam_search"]["all"]
    assert f"| PRM beam search | {beam['1']['accuracy']:.1f} | {beam['2']['accuracy']:.1f} |" in printed
    assert "plotly" in (tmp_path / "lab.html").read_text()
    records = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    right = summary["coverage"]["all"]["2"] > 0  # the run's two samples: a verified path exists if one is right
    assert bool(records) == right and all(r["source"] == "verified" and r["messages"][0]["role"] == "user" for r in records)
    traces = [json.loads(line) for line in (tmp_path / "sos.jsonl").read_text().splitlines()]
    # one per search: the greedy chain, the best-of-2 samples, beam search at N = 1 and 2
    assert [(t["kind"], t["params"].get("n")) for t in traces] == [("greedy", None), ("samples", 2), ("beam_search", 1),
                                                                  ("beam_search", 2)]
    assert all(t["text"].startswith("Question: ") and t["actions"][-1]["action"] in ("answer", "no-answer")
               for t in traces)
    for bad, refusal in [(["--budgets", "1,x"], "comma-separated whole numbers"), (["--strategies", "mcts"], "lab compares"),
                         (["--levels", "9"], "Levels are")]:
        with pytest.raises(SystemExit, match=refusal):
            main([*args, *bad])


def test_bad_input_is_one_clear_line():
    run = subprocess.run([sys.executable, "-m", "reasoning_viz", "solve", "  ", "--strategy", "cot"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode != 0 and "question is empty" in run.stderr and "Traceback" not in run.stderr
    run = subprocess.run([sys.executable, "-m", "reasoning_viz", "solve", QUESTION, "--set", "n=0"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode != 0 and "n must be >= 1" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.slow
def test_bench_quick_prints_ratios():
    run = subprocess.run([sys.executable, "-m", "reasoning_viz", "bench", "--quick"], capture_output=True,
                         text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "ratio (c)/(a)" in run.stdout and "depth" in run.stdout


@pytest.mark.slow
def test_training_quick_runs_every_recipe_end_to_end(tmp_path):
    """--quick: larger model, student (with its tokenizer), then the PRM built on the larger one and
    labelled by the student."""
    student, large, prm = tmp_path / "student", tmp_path / "large", tmp_path / "prm"
    for args in (["large", "--quick", "--out", str(large)],
                 ["student", "--quick", "--out", str(student), "--tokenizer-from", str(large)],
                 ["prm", "--quick", "--student", str(student), "--base", str(large), "--out", str(prm)]):
        run = subprocess.run([sys.executable, "-m", "reasoning_viz.train", *args], capture_output=True, text=True,
                             cwd=ROOT, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
    for folder in (student, large, prm):
        assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
        log = [json.loads(line) for line in (folder / "training_log.jsonl").read_text().splitlines()]
        assert log and all("loss" in row for row in log)
    assert (prm / "format_log.jsonl").exists() and (prm / "surprise_log.jsonl").exists()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    # the three models share one tokenizer: the larger model's
    assert AutoTokenizer.from_pretrained(student).get_vocab() == AutoTokenizer.from_pretrained(large).get_vocab()
    # the PRM is the larger model with new layers on top: the fitted code and comparison layers, 1 for the tags
    assert AutoConfig.from_pretrained(prm).num_hidden_layers == AutoConfig.from_pretrained(large).num_hidden_layers + 3
    assert AutoConfig.from_pretrained(prm).surprise_base_layers == AutoConfig.from_pretrained(large).num_hidden_layers

    from reasoning_viz.models.scorers import MathShepherdPRM

    prm_model = MathShepherdPRM(AutoModelForCausalLM.from_pretrained(prm), AutoTokenizer.from_pretrained(prm))
    scores = prm_model.score("Mia has 3 apples.", [["3 + 1 = 4", "The answer is \\boxed{4}."]])
    assert len(scores[0]) == 2


@pytest.mark.slow
def test_report_card_runs_on_the_bundled_models(tmp_path):
    """``train evaluate`` (the models' cards and the README's table) on one problem per level: every
    level's row, the overall row, and every column filled."""
    card = tmp_path / "card.md"
    run = subprocess.run([sys.executable, "-m", "reasoning_viz.train", "evaluate", "--limit", "1",
                          "--markdown", str(card)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in card.read_text().splitlines() if line.startswith("| ")]
    assert [r[0].strip() for r in rows[1:]] == ["1", "2", "3", "4", "5", "6", "**all**"]
    assert all(len(r) == len(rows[0]) and all(cell.strip() for cell in r) for r in rows[1:])
    assert "on 6 held-out problems" in card.read_text()


@pytest.mark.parametrize("strategy, text, value", [
    ("cot", "greedy=false", {"greedy": False}), ("cot", "greedy=0", {"greedy": False}),
    ("cot", "greedy=yes", {"greedy": True}), ("best_of_n", "n=1e3", {"n": 1000}),
    ("best_of_n", "n=2.5", "n must be a whole number"), ("best_of_n", "n=NaN", "n must be a finite number"),
    ("beam_search", "temperature=0.5", {"temperature": 0.5}), ("cot", "greedy=maybe", "greedy must be true or false"),
])
def test_the_app_and_the_cli_parse_hyperparameters_alike(strategy, text, value):
    """One parser (#24): "false" was true in the app (bool("false")) and false in the CLI."""
    import dataclasses

    from reasoning_viz.cli import parse_params
    from reasoning_viz.service import make_params

    key, _, raw = text.partition("=")
    if isinstance(value, str):
        with pytest.raises(ValueError, match=value):
            make_params(strategy, {key: raw})
        with pytest.raises(SystemExit, match=value):
            parse_params(strategy, [text])
        return
    from_app, from_cli = make_params(strategy, {key: raw}), parse_params(strategy, [text])
    assert from_app == from_cli and {k: getattr(from_cli, k) for k in value} == value
    assert dataclasses.asdict(from_app) == dataclasses.asdict(from_cli)
