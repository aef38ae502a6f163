"""What every strategy shares: common hyperparameters and sampling whole chains step by step."""

from __future__ import annotations

from dataclasses import dataclass

from ..models.generator import SamplingParams
from ..search import SearchContext
from ..tree import AGGREGATIONS

@dataclass
class StrategyParams:
    """Hyperparameters every strategy has."""

    temperature: float | None = None  # None: the model preset's default
    max_depth: int = 10  # steps per path
    max_step_tokens: int = 48  # tokens per step

    def validate(self) -> None:
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {self.max_depth}")
        if self.max_step_tokens < 1:
            raise ValueError(f"max_step_tokens must be >= 1, got {self.max_step_tokens}")
        aggregation = getattr(self, "aggregation", "last")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")

    def sampling(self, temperature: float | None = None) -> SamplingParams:
        t = self.temperature if temperature is None else temperature
        return SamplingParams(temperature=t, max_step_tokens=self.max_step_tokens)


def positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def open_leaves(ctx: SearchContext, ids: list[int]) -> list[int]:
    """The ids that are still open (not terminal, not pruned) and under the depth limit."""
    return [i for i in ids if ctx.tree.node(i).status == "open"]


def sample_chains(ctx: SearchContext, n: int, params: StrategyParams, temperature: float | None = None,
                  stage: str | None = None, root: int = 0, max_tokens: int | None = None) -> list[int]:
    """``n`` independent chains from ``root``, grown one step at a time in one batch; returns leaves.

    Growing chains step-wise (rather than as whole samples) is what puts every step in the tree
    with its own score. ``max_tokens`` caps the tokens of each chain (the fast stage's budget).
    """
    sampling = params.sampling(temperature)
    leaves = [i for ids in ctx.expand([root], n, sampling, stage=stage, what="Sampled first steps") for i in ids]
    base_depth = ctx.tree.node(root).depth
    while True:
        growing = [i for i in open_leaves(ctx, leaves) if ctx.tree.node(i).depth - base_depth < params.max_depth]
        if max_tokens is not None:
            growing = [i for i in growing
                       if sum(n.num_tokens for n in ctx.tree.path(i)[base_depth + 1:]) < max_tokens]
        if not growing:
            return leaves
        children = ctx.expand(growing, 1, sampling, stage=stage, what="Continued chains")
        step = dict(zip(growing, (c[0] for c in children)))
        leaves = [step.get(i, i) for i in leaves]
