"""Best-of-N (Cobbe et al. 2021; Lightman et al. 2023): N full samples, keep the PRM's favourite."""

from __future__ import annotations

from dataclasses import dataclass

from ..search import SearchContext
from ..select import Selection, best_score
from ..tree import SearchTree
from .base import StrategyParams, positive, sample_chains


@dataclass
class BestOfNParams(StrategyParams):
    n: int = 16  # samples; search-and-learn sweeps 4..256
    aggregation: str = "last"  # how step scores make a path score: last, min, prod, mean

    def validate(self) -> None:
        super().validate()
        positive("n", self.n)


def run(ctx: SearchContext, p: BestOfNParams) -> None:
    sample_chains(ctx, p.n, p)


def select(tree: SearchTree, p: BestOfNParams) -> Selection:
    return best_score(tree, p.aggregation)
