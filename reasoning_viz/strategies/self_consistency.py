"""Self-consistency (Wang et al. 2023): N samples, vote on the final answers.

``vote="weighted"`` sums each answer's PRM path scores instead of counting (the "weighted
best-of-N" of Li et al. 2023 / search-and-learn).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..search import SearchContext
from ..select import Selection, majority_vote, weighted_vote
from ..tree import SearchTree
from .base import StrategyParams, positive, sample_chains


@dataclass
class SelfConsistencyParams(StrategyParams):
    n: int = 16  # samples; Wang et al. use 40
    vote: str = "majority"  # or "weighted"
    aggregation: str = "last"  # path score used by the weighted vote

    def validate(self) -> None:
        super().validate()
        positive("n", self.n)
        if self.vote not in ("majority", "weighted"):
            raise ValueError(f"vote must be 'majority' or 'weighted', got {self.vote!r}")


def run(ctx: SearchContext, p: SelfConsistencyParams) -> None:
    sample_chains(ctx, p.n, p)


def select(tree: SearchTree, p: SelfConsistencyParams) -> Selection:
    return (weighted_vote if p.vote == "weighted" else majority_vote)(tree, p.aggregation)
