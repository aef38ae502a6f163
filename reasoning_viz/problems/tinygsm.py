"""TinyGSM: templated grade-school arithmetic word problems with gold step-by-step solutions.

Each problem is a chain: a starting quantity, then ``level`` operations (+ - * /), each with an
exact integer result. The gold solution has one step per operation, in the conventions of real
math models: one step per paragraph, steps separated by a blank line, each step a few words and an
equation ``a op b = c``, and a final line ``The answer is \\boxed{N}.``

Difficulty ``level`` (1..6) is the number of steps; numbers grow with the level too.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

LEVELS = (1, 2, 3, 4, 5, 6)
STEP_DELIMITER = "\n\n"
OPS = ("+", "-", "*", "/")

# Largest value any quantity may take, per level: bigger numbers make each step harder to compute.
MAX_VALUE = {1: 20, 2: 30, 3: 50, 4: 60, 5: 80, 6: 100}
MAX_FACTOR = {1: 3, 2: 4, 3: 5, 4: 5, 5: 5, 6: 5}

NAMES = ("Mia", "Leo", "Ava", "Noah", "Zoe", "Omar", "Lily", "Sam", "Nina", "Ravi", "Emma", "Yuki")
PRONOUN = {"Mia": "She", "Ava": "She", "Zoe": "She", "Lily": "She", "Nina": "She", "Emma": "She",
           "Yuki": "She", "Leo": "He", "Noah": "He", "Omar": "He", "Sam": "He", "Ravi": "He"}


@dataclass(frozen=True)
class Frame:
    """A story setting: how the start, each operation and the question are worded."""

    start: str  # uses {name} {a} {unit}
    question: str  # uses {name} {unit}
    units: tuple[str, ...]
    add: tuple[tuple[str, str], ...]  # (sentence with {p} {b} {unit}, step words)
    sub: tuple[tuple[str, str], ...]
    mul: tuple[tuple[str, str], ...]
    div: tuple[tuple[str, str], ...]


FRAMES = (
    Frame(
        start="{name} has {a} {unit}.",
        question="How many {unit} does {name} have now?",
        units=("apples", "marbles", "stickers", "cards", "shells", "coins", "pencils", "books"),
        add=(("{p} buys {b} more {unit}.", "Buys {b} more"),
             ("{p} finds {b} more {unit}.", "Finds {b} more"),
             ("A friend gives {o} {b} {unit}.", "Gets {b}")),
        sub=(("{p} gives {b} {unit} to a friend.", "Gives away {b}"),
             ("{p} loses {b} {unit}.", "Loses {b}"),
             ("{p} sells {b} {unit}.", "Sells {b}")),
        mul=(("Then {p_l} ends up with {b} times as many {unit}.", "{b} times as many"),
             ("{p} collects until {p_l} has {b} times as many {unit}.", "Has {b} times as many")),
        div=(("{p} splits the {unit} into {b} equal shares and keeps one share.", "Splits into {b}"),
             ("{p} puts the {unit} into {b} equal piles and keeps one pile.", "Keeps one of {b} piles")),
    ),
    Frame(
        start="A bus has {a} {unit} on board.",
        question="How many {unit} are on the bus now?",
        units=("people", "children", "tourists", "students"),
        add=(("At the next stop, {b} {unit} get on.", "{b} get on"),
             ("Then {b} more {unit} get on.", "{b} more get on")),
        sub=(("At the next stop, {b} {unit} get off.", "{b} get off"),
             ("Then {b} {unit} leave the bus.", "{b} leave")),
        mul=(("At a big station the number of {unit} becomes {b} times as large.", "{b} times as large"),),
        div=(("At a station the {unit} split into {b} equal groups and only one group stays.", "One of {b} groups stays"),),
    ),
    Frame(
        start="A tank holds {a} {unit} of water.",
        question="How many {unit} of water are in the tank now?",
        units=("liters", "gallons", "cups"),
        add=(("{name} pours in {b} more {unit}.", "Pours in {b}"),
             ("Rain adds {b} {unit}.", "Rain adds {b}")),
        sub=(("{name} drains {b} {unit}.", "Drains {b}"),
             ("{b} {unit} leak out.", "{b} leak out")),
        mul=(("A pump makes the amount {b} times as much.", "{b} times as much"),),
        div=(("The water is split evenly into {b} tanks and this tank keeps one part.", "Split into {b}"),),
    ),
    Frame(
        start="{name} saves {a} {unit}.",
        question="How many {unit} does {name} have now?",
        units=("dollars", "euros", "points"),
        add=(("{p} earns {b} more {unit}.", "Earns {b}"),
             ("{p} wins {b} {unit}.", "Wins {b}")),
        sub=(("{p} spends {b} {unit}.", "Spends {b}"),
             ("{p} pays {b} {unit} for a gift.", "Pays {b}")),
        mul=(("{p} invests and ends with {b} times as many {unit}.", "{b} times as many"),),
        div=(("{p} splits the {unit} equally among {b} people, keeping one part.", "Splits {b} ways"),),
    ),
)


@dataclass(frozen=True)
class Problem:
    """One word problem with its gold answer and gold solution steps."""

    id: str
    level: int
    question: str
    steps: tuple[str, ...]
    answer: int

    @property
    def solution(self) -> str:
        """The gold solution text, steps separated by blank lines, ending in a boxed answer."""
        return STEP_DELIMITER.join(self.steps) + STEP_DELIMITER + final_answer_line(self.answer)

    def to_json(self) -> dict:
        return {**asdict(self), "steps": list(self.steps)}

    @classmethod
    def from_json(cls, data: dict) -> "Problem":
        return cls(id=data["id"], level=int(data["level"]), question=data["question"],
                   steps=tuple(data["steps"]), answer=int(data["answer"]))


def final_answer_line(answer: int | str) -> str:
    return f"The answer is \\boxed{{{answer}}}."


def _pick_op(rng: random.Random, value: int, max_value: int, max_factor: int) -> tuple[str, int] | None:
    """Choose an operation and operand that keep every quantity a positive integer <= max_value."""
    choices = list(OPS)
    rng.shuffle(choices)
    for op in choices:
        if op == "+" and value < max_value:
            return op, rng.randint(1, min(max_value - value, max(2, max_value // 2)))
        if op == "-" and value > 1:
            return op, rng.randint(1, value - 1)
        if op == "*" and value * 2 <= max_value:
            return op, rng.randint(2, min(max_factor, max_value // value))
        if op == "/":
            divisors = [d for d in range(2, min(max_factor, value) + 1) if value % d == 0 and value // d >= 1]
            if divisors:
                return op, rng.choice(divisors)
    return None


def apply_op(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a // b
    raise ValueError(f"unknown operation {op!r}")


def generate_problem(rng: random.Random, level: int) -> Problem:
    """Sample one problem of the given level (number of steps) from ``rng``."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level}")
    max_value, max_factor = MAX_VALUE[level], MAX_FACTOR[level]
    frame = rng.choice(FRAMES)
    name = rng.choice(NAMES)
    pronoun = PRONOUN[name]
    unit = rng.choice(frame.units)
    value = rng.randint(max(2, max_value // 5), max_value)
    words = dict(name=name, p=pronoun, p_l=pronoun.lower(), o="him" if pronoun == "He" else "her", unit=unit)
    sentences = [frame.start.format(a=value, **words)]
    steps = []
    for _ in range(level):
        picked = _pick_op(rng, value, max_value, max_factor)
        while picked is None:  # unreachable in practice: '+' or '-' always fits; kept for safety
            picked = _pick_op(rng, value, max_value, max_factor)
        op, b = picked
        variants = {"+": frame.add, "-": frame.sub, "*": frame.mul, "/": frame.div}[op]
        sentence, step_words = rng.choice(variants)
        new_value = apply_op(value, op, b)
        fmt = dict(b=b, **words)
        sentences.append(sentence.format(**fmt))
        steps.append(f"{step_words.format(**fmt)}: {value} {op} {b} = {new_value}")
        value = new_value
    sentences.append(frame.question.format(**words))
    question = " ".join(sentences)
    return Problem(id="", level=level, question=question, steps=tuple(steps), answer=value)


def sample_problems(seed: int, n_per_level: int, levels: tuple[int, ...] = LEVELS,
                    exclude: set[str] | None = None, prefix: str = "p") -> list[Problem]:
    """``n_per_level`` distinct problems per level, skipping any question in ``exclude``."""
    rng = random.Random(seed)
    exclude = exclude or set()
    seen: set[str] = set()
    out: list[Problem] = []
    for level in levels:
        count = 0
        while count < n_per_level:
            p = generate_problem(rng, level)
            if p.question in exclude or p.question in seen:
                continue
            seen.add(p.question)
            out.append(Problem(id=f"{prefix}{level}-{count:04d}", level=level, question=p.question,
                               steps=p.steps, answer=p.answer))
            count += 1
    return out


TEST_SET_PATH = Path(__file__).with_name("tinygsm_test.jsonl")
TEST_SET_SEED = 20261121
TEST_PER_LEVEL = 100


def load_test_set(path: Path = TEST_SET_PATH) -> list[Problem]:
    """The committed held-out problems (never produced by the training sampler)."""
    with open(path, encoding="utf-8") as f:
        return [Problem.from_json(json.loads(line)) for line in f if line.strip()]


def write_test_set(path: Path = TEST_SET_PATH) -> list[Problem]:
    """Regenerate the held-out file; deterministic, so the committed file can be checked."""
    problems = sample_problems(TEST_SET_SEED, TEST_PER_LEVEL, prefix="test-L")
    with open(path, "w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps(p.to_json()) + "\n")
    return problems


def training_problems(seed: int, n_per_level: int, levels: tuple[int, ...] = LEVELS) -> list[Problem]:
    """Training problems: fresh samples that are guaranteed disjoint from the held-out set."""
    held_out = {p.question for p in load_test_set()}
    problems = sample_problems(seed, n_per_level, levels, exclude=held_out, prefix=f"train{seed}-L")
    assert not held_out & {p.question for p in problems}, "training data overlaps the held-out set"
    return problems


def _domain_words() -> frozenset[str]:
    """Every word a TinyGSM question can contain (lower case, without numbers or punctuation)."""
    texts = [*NAMES, *PRONOUN.values(), "him", "her"]
    for frame in FRAMES:
        texts += [frame.start, frame.question, *frame.units]
        texts += [sentence for variants in (frame.add, frame.sub, frame.mul, frame.div) for sentence, _ in variants]
    return frozenset(w for t in texts for w in _WORD.findall(re.sub(r"\{[^}]*\}", " ", t).lower()))


_WORD = re.compile(r"[^\W\d_]+")
DOMAIN_WORDS = _domain_words()
OUT_OF_DOMAIN = ("This question is unlike the bundled models' training problems (TinyGSM: a starting quantity "
                 "changed by +, -, * or / in one to six steps, worded as in the examples), so their answer and "
                 "scores say little about it.")


def domain_warning(question: str, min_known: float = 0.8) -> str | None:
    """A warning when ``question`` is unlike TinyGSM's problems, else None: it must hold at least two
    numbers and ``min_known`` of its words must be words TinyGSM questions use. A bundled model answers
    anything (it once answered "asdf qwerty" with 4, scored 1.000); this says when not to trust it."""
    words = _WORD.findall(question.lower())
    numbers = re.findall(r"\d+", question)
    if len(numbers) < 2 or not words or sum(w in DOMAIN_WORDS for w in words) < min_known * len(words):
        return OUT_OF_DOMAIN
    return None


# A working step's equation ``a op b = c`` (integers).
EQUATION = re.compile(r"(-?\d+)\s*([-+*/])\s*(-?\d+)\s*=\s*(-?\d+)")


def reference_step_labels(problem: Problem, steps: list[str]) -> list[bool]:
    """Exact step correctness against the gold solution, for measuring a PRM.

    Step j (0-based) is correct when every step up to it is correct and: for a working step, its
    equation ``a op b = c`` is arithmetically true and ``c`` equals the gold result of step j (so
    the path can still reach the gold answer); for the final step, its boxed answer is the gold
    answer. An extra step beyond the gold solution's length, or one with no equation, is wrong.
    """
    from .grading import answers_match, extract_boxed

    gold_results = [int(s.rsplit("=", 1)[1]) for s in problem.steps]
    labels: list[bool] = []
    ok = True
    for j, step in enumerate(steps):
        boxed = extract_boxed(step)
        if boxed is not None:
            ok = ok and j == len(gold_results) and answers_match(boxed, problem.answer)
        else:
            m = EQUATION.search(step)
            if m is None or j >= len(gold_results):
                ok = False
            else:
                a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
                true = (op != "/" or b != 0) and (apply_op(a, op, b) == c if op != "/" else a == b * c)
                ok = ok and true and c == gold_results[j]
        labels.append(ok)
    return labels
