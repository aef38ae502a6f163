"""Chain of thought (Wei et al. 2022): one chain, greedy or sampled, scored step by step."""

from __future__ import annotations

from dataclasses import dataclass

from ..search import SearchContext
from ..select import Selection, best_score
from ..tree import SearchTree
from .base import StrategyParams, sample_chains


@dataclass
class ChainOfThoughtParams(StrategyParams):
    greedy: bool = True  # False: one sampled chain at ``temperature``


def run(ctx: SearchContext, p: ChainOfThoughtParams) -> None:
    sample_chains(ctx, 1, p, temperature=0.0 if p.greedy else None)


def select(tree: SearchTree, p: ChainOfThoughtParams) -> Selection:
    return best_score(tree, "last")  # there is one path: its answer is the answer
