"""The search strategies, one file each, registered here by name.

Each strategy is ``run(ctx, params)`` (grow the tree through ``SearchContext``) plus
``select(tree, params)`` (a pure answer-selection rule), with its hyperparameters in one dataclass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("cot", "Chain of thought", chain_of_thought.ChainOfThoughtParams, chain_of_thought.run,
             chain_of_thought.select, "One answer, step by step: greedy, or one sample.",
             "Wei et al. 2022, arXiv:2201.11903"),
    Strategy("best_of_n", "Best-of-N", best_of_n.BestOfNParams, best_of_n.run, best_of_n.select,
             "Sample N answers; the PRM's highest-scored one wins.", "Lightman et al. 2023, arXiv:2305.20050"),
    Strategy("self_consistency", "Self-consistency vote", self_consistency.SelfConsistencyParams,
             self_consistency.run, self_consistency.select,
             "Sample N answers; the most common answer wins (or PRM-weighted votes).",
             "Wang et al. 2023, arXiv:2203.11171"),
    Strategy("cot_decoding", "CoT-decoding", cot_decoding.CoTDecodingParams, cot_decoding.run,
             cot_decoding.select, "Branch on the top-k first tokens, continue greedily, trust the most "
             "confident answer.", "Wang & Zhou 2024, arXiv:2402.10200"),
    Strategy("beam_search", "PRM beam search", beam_search.BeamSearchParams, beam_search.run,
             beam_search.select, "Keep the PRM's best N/M partial answers at every step; extend each M ways.",
             "Snell et al. 2024, arXiv:2408.03314"),
    Strategy("dvts", "DVTS", dvts.DVTSParams, dvts.run, dvts.select,
             "N/M independent greedy PRM searches, for diversity.", "Beeching et al. 2024 (HF blog)"),
    Strategy("mcts", "MCTS", mcts.MCTSParams, mcts.run, mcts.select,
             "Monte-Carlo tree search: explore by PUCT, value steps by the PRM, follow the most visits.",
             "Silver et al. 2017; Zhang et al. 2024, arXiv:2406.03816"),
    Strategy("fast_slow", "Fast / slow", fast_slow.FastSlowParams, fast_slow.run, fast_slow.select,
             "Answer fast; if the PRM doubts it, search slowly with beam search; summarise.",
             "Chung et al. 2025 (Thinker), arXiv:2505.21097"),
)}
