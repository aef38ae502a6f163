import json
import re
import subprocess
import sys
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


def test_eval_prints_a_table(capsys):
    argv = ["eval", "--strategy", "cot:greedy=false,self_consistency", "--n", "4", "--levels", "1", "--limit", "2",
            "--set", "vote=weighted"]  # a shared --set goes to the strategies that take it
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 held-out problems (levels 1), N=4" in out
    rows = [line for line in out.splitlines() if line.startswith("| Chain of thought (greedy=false) |") or
            line.startswith("| Self-consistency vote |")]
    assert len(rows) == 2
    for row in rows:
        accuracy = float(row.split("|")[2])
        assert 0.0 <= accuracy <= 100.0


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


def test_bad_input_is_one_clear_line():
    run = subprocess.run([sys.executable, "-m", "reasoning_viz", "solve", "  ", "--strategy", "cot"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode != 0 and "question is empty" in run.stderr and "Traceback" not in run.stderr
    run = subprocess.run([sys.executable, "-m", "reasoning_viz", "solve", QUESTION, "--set", "n=0"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode != 0 and "n must be >= 1" in run.stderr and "Traceback" not in run.stderr


def test_bench_quick_prints_ratios():
    run = subprocess.run([sys.executable, "-m", "reasoning_viz", "bench", "--quick"], capture_output=True,
                         text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "ratio (c)/(a)" in run.stdout and "depth" in run.stdout


def test_training_quick_runs_end_to_end(tmp_path):
    policy, prm = tmp_path / "policy", tmp_path / "prm"
    for args in (["policy", "--quick", "--out", str(policy)],
                 ["prm", "--quick", "--policy", str(policy), "--out", str(prm)]):
        run = subprocess.run([sys.executable, "-m", "reasoning_viz.train", *args], capture_output=True, text=True,
                             cwd=ROOT, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
    for folder in (policy, prm):
        assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
        log = [json.loads(line) for line in (folder / "training_log.jsonl").read_text().splitlines()]
        assert log and all("loss" in row for row in log)
    assert (prm / "format_log.jsonl").exists()  # --quick runs the format adaptation too
    assert (prm / "surprise_log.jsonl").exists()  # ... and the surprise stage (the comparison fit's log)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    # the PRM is the policy with new layers on top: the fitted code and comparison layers, 1 for the tags
    assert AutoConfig.from_pretrained(prm).num_hidden_layers == AutoConfig.from_pretrained(policy).num_hidden_layers + 3

    from reasoning_viz.models.scorers import MathShepherdPRM

    prm_model = MathShepherdPRM(AutoModelForCausalLM.from_pretrained(prm), AutoTokenizer.from_pretrained(prm))
    scores = prm_model.score("Mia has 3 apples.", [["3 + 1 = 4", "The answer is \\boxed{4}."]])
    assert len(scores[0]) == 2
    assert AutoConfig.from_pretrained(prm).surprise_base_layers == AutoConfig.from_pretrained(policy).num_hidden_layers
    report = subprocess.run([sys.executable, "scripts/surprise_report.py", "--quick", "--prm", str(prm)],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    for line in ("majority@16:", "base surprise", "PRM at tokens", "PRM at tags"):
        assert line in report.stdout
    assert "step AUROC" in report.stdout and "nan" not in report.stdout


def test_surprise_report_refuses_a_prm_without_the_surprise_layers():
    # the policy stands in for a plain fine-tuned PRM (--compare-steps 0): same shape, no surprise stage
    run = subprocess.run([sys.executable, "scripts/surprise_report.py", "--prm", "assets/models/tinygsm-policy"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 2 and "has no surprise stage" in run.stderr


def test_prm_learnability_probe_runs_and_reports():
    run = subprocess.run([sys.executable, "scripts/prm_learnability.py", "--quick", "--paired", "--adapt", "1"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    for line in ("result digits right:", "after 1 adaptation steps:", "its own next-token probability",
                 "final loss", "held out: correct step above"):
        assert line in run.stdout, run.stdout
    at_slip = subprocess.run([sys.executable, "scripts/prm_learnability.py", "--quick", "--at-slip", "--extra-layers", "1"],
                             capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert at_slip.returncode == 0 and "held out: correct step above" in at_slip.stdout, at_slip.stderr[-3000:]
    bad = subprocess.run([sys.executable, "scripts/prm_learnability.py", "--lr", "0"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "--lr must be positive" in bad.stderr


def test_surprise_bottleneck_at_full_rank_reproduces_the_exact_figures():
    run = subprocess.run([sys.executable, "scripts/surprise_bottleneck.py", "--quick", "--ranks", "8,641"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    figures = {line.split("best-of-16")[0].strip(): line.split("best-of-16")[1]
               for line in run.stdout.splitlines() if "best-of-16" in line}
    assert set(figures) == {"exact distribution", "rank-8 code (in-sample PCA)", "rank-8 code, float32",
                            "rank-641 code (in-sample PCA)", "rank-641 code, float32"}
    # A full-rank code loses nothing: same best-of-16 and AUROC as the exact distribution.
    assert figures["rank-641 code (in-sample PCA)"] == figures["exact distribution"]
    # ...and a small one does lose something, so the reconstruction is really used.
    assert figures["rank-8 code (in-sample PCA)"] != figures["exact distribution"]
    assert "nan" not in run.stdout
    bad = subprocess.run([sys.executable, "scripts/surprise_bottleneck.py", "--ranks", "a,b"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "--ranks must be comma-separated integers" in bad.stderr
    too_big = subprocess.run([sys.executable, "scripts/surprise_bottleneck.py", "--ranks", "642"],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert too_big.returncode == 2 and "at most the vocabulary size, 641" in too_big.stderr


def test_surprise_bottleneck_steps_line_up_with_their_tokens():
    import importlib.util

    from reasoning_viz.models.loading import BUNDLED_POLICY, load_causal_lm

    spec = importlib.util.spec_from_file_location("surprise_bottleneck", ROOT / "scripts" / "surprise_bottleneck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _, tokenizer = load_causal_lm(BUNDLED_POLICY)
    text = "Buys 4: 12 + 4 = 16\n\nThe answer is \\boxed{16}."
    ids = tokenizer.encode(text, add_special_tokens=False)
    steps, ends = module.steps_and_ends(tokenizer, ids)
    assert steps == ["Buys 4: 12 + 4 = 16", "The answer is \\boxed{16}."]
    assert tokenizer.decode(ids[: ends[0]]) == steps[0] and ends[-1] == len(ids)
