"""What a search runs with: a policy's step generator and a step scorer, with their ids and defaults.

Here rather than in ``search.py`` so that ``models/loading.py`` can build one without importing the
search that uses it (imports go one way).
"""

from __future__ import annotations

from dataclasses import dataclass

from .generator import DEFAULT_TEMPERATURE, PolicyBackend
from .scorers import StepScorer


@dataclass
class Models:
    """A step generator (the policy) and a step scorer (PRM or other)."""

    generator: PolicyBackend  # in-process (StepGenerator) or through an engine (EngineGenerator)
    scorer: StepScorer
    policy_id: str
    scorer_id: str
    system_prompt: str | None = None
    temperature: float = DEFAULT_TEMPERATURE  # this policy's sampling temperature (a strategy may override)
    domain: str | None = None  # "tinygsm" for the bundled models: questions outside it get a warning

    def runs_weights_here(self) -> bool:
        """Whether a search with these models runs model weights in this process (on a ZeroGPU Space,
        only such a search asks for the GPU): an in-process policy, or a scorer with a model of its own
        (a PRM or a judge). A policy served by an engine, scored by the calculator or by the engine's
        own probabilities or rollouts, needs no GPU here."""
        return self.generator.describe() is None or getattr(self.scorer, "model", None) is not None
