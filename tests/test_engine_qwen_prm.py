"""Qwen2.5-Math-PRM's format through vLLM's pooling API (#22): a real vLLM server (its CPU build) serving
a small randomly initialised ``Qwen2ForProcessRewardModel`` (the real model's architecture and config
class, the real model's special tokens and chat template; 7B weights do not fit this CPU), with the
flags ``prm_engine_flags(..., "qwen-prm")`` gives, against the same weights in-process (``QwenPRM``)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import Qwen2Config

from engine_process import VLLMServer, require_vllm
from reasoning_viz.models.engine_prm import EnginePRM, prm_engine_flags
from reasoning_viz.models.loading import load_models, load_scorer, load_tokenizer
from reasoning_viz.models.presets import BUNDLED_STUDENT
from reasoning_viz.models.prm_adapters import QwenProcessRewardModel
from reasoning_viz.problems.tinygsm import load_test_set
from reasoning_viz.strategies import STRATEGIES, run_search
from test_prm_adapters import PATHS, QUESTION, qwen_tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def qwen_prm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen-prm")
    tok = qwen_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024, num_labels=2)
    QwenProcessRewardModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())  # named as the real model's config names it
    (folder / "config.json").write_text(json.dumps({**saved, "architectures": ["Qwen2ForProcessRewardModel"]}))
    return folder


@pytest.fixture(scope="module")
def qwen_engine(qwen_prm):
    require_vllm()
    with VLLMServer(qwen_prm, extra_args=prm_engine_flags(load_tokenizer(qwen_prm), "qwen-prm")) as server:
        yield server


def test_the_engines_step_scores_are_the_in_process_qwen_prms(qwen_prm, qwen_engine):
    """The positive class's probability at each ``<extra_0>``, there and here, to float32 rounding."""
    prm = EnginePRM.connect(qwen_engine.url, load_tokenizer(qwen_prm), "qwen-prm")
    here = load_scorer("qwen-prm", str(qwen_prm), torch.device("cpu"))
    theirs, ours = prm.score(QUESTION, PATHS), here.score(QUESTION, PATHS)
    assert [len(s) for s in theirs] == [len(s) for s in ours] == [len(p) for p in PATHS]
    assert max(abs(a - b) for t, o in zip(theirs, ours) for a, b in zip(t, o)) < 1e-4
    assert len({round(x, 4) for s in theirs for x in s}) > 3  # real, differing scores, not a constant
    assert prm.name == "qwen-prm" and prm.tokens_scored > 0


def test_a_search_scored_there_is_the_search_scored_here(qwen_prm, qwen_engine):
    problem = load_test_set()[250]
    args = (str(BUNDLED_STUDENT), str(qwen_prm), "qwen-prm")
    there, here = load_models(*args, prm_url=qwen_engine.url), load_models(*args)
    params = STRATEGIES["beam_search"].params(n=8, beam_width=2, max_depth=6)
    a = run_search(problem.question, "beam_search", there, params, seed=0, gold=problem.answer)
    b = run_search(problem.question, "beam_search", here, params, seed=0, gold=problem.answer)
    assert a.run["scorer_engine"]["url"] == qwen_engine.url and "scorer_engine" not in b.run
    assert [n.text for n in a.nodes()] == [n.text for n in b.nodes()]
    assert [n.step_score for n in a.nodes()[1:]] == pytest.approx([n.step_score for n in b.nodes()[1:]], abs=1e-4)
