"""Math-Shepherd's labels for the PRM: sample the student's solutions, label every step by Monte-Carlo
rollouts *of the student* (soft estimation; ``prm.py`` says why), and cache the result, so that the
PRM's training stages can be re-run without relabelling."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..models.generator import SamplingParams, StepGenerator, encode_steps
from ..models.presets import BUNDLED_STUDENT, BUNDLED_TEMPERATURE
from ..problems.grading import answers_match, extract_boxed
from .policy import ProblemStream


@dataclass
class LabelConfig:
    """How the PRM's training paths are sampled and labelled."""

    seed: int = 0
    problems: int = 1500  # training problems to sample solutions for
    samples_per_problem: int = 2
    temperature: float = BUNDLED_TEMPERATURE  # samples and rollouts, as the app samples the student
    rollouts: int = 6  # K completions per step
    max_solution_tokens: int = 256
    student_dir: Path = BUNDLED_STUDENT
    cache: Path | None = None  # reuse the labelled paths from here (written on the first run)


def split_steps(solution: str) -> list[str]:
    """A model's solution as a list of non-empty steps (paragraphs)."""
    return [s.strip() for s in solution.split("\n\n") if s.strip()]


@dataclass
class LabeledPath:
    question: str
    steps: list[str]
    labels: list[float]  # per step: fraction of rollouts reaching the gold answer, the target P(+)


def label_paths(generator: StepGenerator, stream: ProblemStream, cfg: LabelConfig) -> list[LabeledPath]:
    """Sample the student's solutions and label each step by its MC rollouts (soft estimation).

    Steps are rolled out depth by depth; once no rollout from a step reaches the gold answer, the
    later steps of that path are labelled 0 without rollouts (they build on a result nothing
    recovers from — the first-error assumption of OmegaPRM, Luo et al. 2024). With 24 problems per
    call, this took labelling from 0.65 s to 0.34 s per problem (measured on 48 and 96 problems).
    A final answer step is labelled by its answer, exactly.
    """
    tok = generator.tokenizer
    rng = torch.Generator().manual_seed(cfg.seed)
    # samples and rollouts at the temperature the app samples the student at: score what users see
    sample = SamplingParams(temperature=cfg.temperature, max_step_tokens=cfg.max_solution_tokens,
                            stop_at_step=False)
    problems = [stream.next() for _ in range(cfg.problems)]
    per_call = 24
    labeled: list[LabeledPath] = []
    for lo in tqdm(range(0, len(problems), per_call), desc="prm labels", dynamic_ncols=True):
        batch = problems[lo:lo + per_call]
        prompts = [generator.prompt_ids(p.question) for p in batch]
        solutions = generator.expand(prompts, cfg.samples_per_problem, sample, generator=rng)
        paths = [(prob, prompt, steps, [0.0] * len(steps))
                 for prob, prompt, sols in zip(batch, prompts, solutions)
                 for steps in (split_steps(sol.text) for sol in sols) if steps]
        for prob, _, steps, labels in paths:
            if extract_boxed(steps[-1]) is not None:
                labels[-1] = float(answers_match(extract_boxed(steps[-1]), prob.answer))
        pending, depth = list(range(len(paths))), 0
        while pending:
            owners = [i for i in pending if depth < len(paths[i][2]) - 1
                      and extract_boxed(paths[i][2][depth]) is None]
            if not owners:
                break
            prefixes = [paths[i][1] + encode_steps(tok, paths[i][2][: depth + 1]) for i in owners]
            rollouts = generator.expand(prefixes, cfg.rollouts, sample, generator=rng)
            pending = []
            for i, rolls in zip(owners, rollouts):
                gold = paths[i][0].answer
                fraction = sum(answers_match(extract_boxed(r.text), gold) for r in rolls) / len(rolls)
                paths[i][3][depth] = fraction
                if fraction > 0:
                    pending.append(i)
            depth += 1
        labeled.extend(LabeledPath(p.question, steps, labels) for p, _, steps, labels in paths)
    return labeled


def load_or_label(cfg: LabelConfig) -> list[LabeledPath]:
    """The labelled paths: from ``cfg.cache`` when it holds a run of the same labelling recipe, else
    sampled and rolled out with the student (and written to ``cfg.cache``)."""
    recipe = {k: str(getattr(cfg, k)) for k in ("seed", "problems", "samples_per_problem", "temperature",
                                                 "rollouts", "max_solution_tokens")}
    # the student by its weights' size and folder name, not its path: a cache made in another checkout counts
    weights = cfg.student_dir / "model.safetensors"
    recipe["student"] = f"{cfg.student_dir.name} ({weights.stat().st_size if weights.exists() else 0} bytes)"
    cache = cfg.cache
    if cache is not None and cache.exists():
        try:
            data = json.loads(cache.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SystemExit(f"{cache} is not a labels cache ({err}); delete it to relabel") from None
        found = data.get("recipe") if isinstance(data, dict) else None
        if found != recipe:
            raise SystemExit(f"{cache} was labelled with another recipe ({found}); "
                             "delete it or pass another --labels-cache")
        print(f"prm: labels from {cache}")
        return [LabeledPath(**p) for p in data["paths"]]
    tokenizer = AutoTokenizer.from_pretrained(cfg.student_dir)
    student = AutoModelForCausalLM.from_pretrained(cfg.student_dir).eval()
    paths = label_paths(StepGenerator(student, tokenizer, memory_budget_mb=512), ProblemStream(cfg.seed + 1000), cfg)
    if cache is not None:
        cache.write_text(json.dumps({"recipe": recipe, "paths": [asdict(p) for p in paths]}), encoding="utf-8")
    return paths
