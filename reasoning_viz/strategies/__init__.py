"""The search strategies, one file each, registered here by name.

Each strategy is ``run(ctx, params)`` (grow the tree through ``SearchContext``) plus
``select(tree, params)`` (a pure answer-selection rule), with its hyperparameters in one dataclass.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..search import Budget, Models, SearchContext, run_strategy
from ..tree import SearchTree
from . import beam_search, best_of_n, chain_of_thought, cot_decoding, dvts, fast_slow, mcts, self_consistency


@dataclass(frozen=True)
class Strategy:
    name: str
    title: str
    params: type
    run: Callable[[Any, Any], None]
    select: Callable[[Any, Any], Any]
    summary: str  # one plain sentence for the UI and the README
    paper: str
    link: str  # where the paper (or the write-up) is
    helps: str  # when it helps, in plain words, for the About tab


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("cot", "Chain of thought", chain_of_thought.ChainOfThoughtParams, chain_of_thought.run,
             chain_of_thought.select, "One answer, step by step: greedy, or one sample.",
             "Wei et al. 2022, arXiv:2201.11903", "https://arxiv.org/abs/2201.11903",
             "The baseline every search is measured against: the cheapest answer, as good as the model's own best "
             "guess."),
    Strategy("best_of_n", "Best-of-N", best_of_n.BestOfNParams, best_of_n.run, best_of_n.select,
             "Sample N answers; the PRM's highest-scored one wins.", "Lightman et al. 2023, arXiv:2305.20050",
             "https://arxiv.org/abs/2305.20050",
             "When the verifier tells right from wrong better than the policy does: more samples give it more "
             "chances to find a right one. It is only as good as the verifier: a wrong answer the PRM likes wins."),
    Strategy("self_consistency", "Self-consistency vote", self_consistency.SelfConsistencyParams,
             self_consistency.run, self_consistency.select,
             "Sample N answers; the most common answer wins (or PRM-weighted votes).",
             "Wang et al. 2023, arXiv:2203.11171", "https://arxiv.org/abs/2203.11171",
             "When the model's mistakes scatter over different answers while its right answers agree; it needs no "
             "verifier. It cannot help where the model is wrong the same way most of the time."),
    Strategy("cot_decoding", "CoT-decoding", cot_decoding.CoTDecodingParams, cot_decoding.run,
             cot_decoding.select, "Branch on the top-k first tokens, continue greedily, trust the most "
             "confident answer.", "Wang & Zhou 2024, arXiv:2402.10200", "https://arxiv.org/abs/2402.10200",
             "When greedy decoding starts down a wrong path but a less likely first token starts a right one: no "
             "sampling and no verifier, only the model's confidence in its answer."),
    Strategy("beam_search", "PRM beam search", beam_search.BeamSearchParams, beam_search.run,
             beam_search.select, "Keep the PRM's best N/M partial answers at every step; extend each M ways.",
             "Snell et al. 2024, arXiv:2408.03314", "https://arxiv.org/abs/2408.03314",
             "On medium and hard problems with a good PRM: compute goes to the partial solutions that look right, "
             "step by step, rather than to whole samples (Snell et al. found it up to 4x more efficient than "
             "best-of-N at a fixed budget). On easy problems it can over-trust the PRM."),
    Strategy("dvts", "DVTS", dvts.DVTSParams, dvts.run, dvts.select,
             "N/M independent greedy PRM searches, for diversity.", "Beeching et al. 2024 (HF blog)",
             "https://huggingface.co/spaces/HuggingFaceH4/blogpost-scaling-test-time-compute",
             "Beam search's step-by-step checking without its habit of collapsing onto one line of reasoning: it "
             "helps most at large N, where beams would otherwise all be copies of each other."),
    Strategy("mcts", "MCTS", mcts.MCTSParams, mcts.run, mcts.select,
             "Monte-Carlo tree search: explore by PUCT, value steps by the PRM, follow the most visits.",
             "Silver et al. 2017; Zhang et al. 2024, arXiv:2406.03816", "https://arxiv.org/abs/2406.03816",
             "When it pays to come back to a promising step and explore it deeper, balancing what looks good "
             "against what is unexplored; it spends the most compute per answer."),
    Strategy("fast_slow", "Fast / slow", fast_slow.FastSlowParams, fast_slow.run, fast_slow.select,
             "Answer fast; if the PRM doubts it, search slowly with beam search; summarise.",
             "Chung et al. 2025 (Thinker), arXiv:2505.21097", "https://arxiv.org/abs/2505.21097",
             "When problems mix easy and hard: an easy one costs one fast answer that passes the check, a hard "
             "one gets the slow search."),
)}



def run_search(question: str, strategy: str, models: Models, params: Any = None, *, seed: int = 0,
               budget: Budget | None = None, gold: str | int | None = None,
               on_update: Callable[[SearchContext], None] | None = None,
               cancel: threading.Event | None = None) -> SearchTree:
    """Run the strategy named ``strategy`` on one question (``search.run_strategy`` does the work)."""
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {sorted(STRATEGIES)}")
    return run_strategy(question, STRATEGIES[strategy], models, params, seed=seed, budget=budget, gold=gold,
                        on_update=on_update, cancel=cancel)
