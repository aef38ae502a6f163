"""Answer extraction from model outputs and grading against a gold answer.

Plain integers (the bundled domain, most GSM-style answers) take a fast exact path; anything else
(fractions, expressions, LaTeX) goes to ``math-verify``, the grader Hugging Face maintains.
"""

from __future__ import annotations

import re

_BOXED = "\\boxed{"
_INTEGER = re.compile(r"^[+-]?\d{1,3}(,\d{3})+$|^[+-]?\d+$")


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` in ``text`` (braces balanced), or None."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    i, depth = start + len(_BOXED), 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                content = text[i:j].strip()
                return content or None
    return None  # unbalanced: the output was cut off mid-answer


_STATED = re.compile(r"answer\s*(?:is|:|=)\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)


def stated_answer(text: str) -> str | None:
    """The number after the last "the answer is" (or "answer:") in ``text``, or None. For a path that ends
    without ``\\boxed{}``: real small instruct models (SmolLM2) often state the answer in words."""
    found = _STATED.findall(text)
    return found[-1].rstrip(".,") if found else None


def normalize_answer(answer: str | int | None) -> str | None:
    """A canonical string for vote counting: integers lose separators, signs and leading zeros."""
    if answer is None:
        return None
    s = str(answer).strip().strip("$").strip()
    s = re.sub(r"\\(?:,|!|;|\s)", "", s)  # LaTeX thin spaces inside numbers
    s = s.replace(" ", "")
    if _INTEGER.match(s):
        return str(int(s.replace(",", "")))
    return s or None


def _as_int(s: str) -> int | None:
    return int(s) if re.fullmatch(r"[+-]?\d+", s) else None


def answers_match(predicted: str | int | None, gold: str | int | None) -> bool:
    """Whether two final answers are mathematically equal (fast path for integers, else math-verify)."""
    p, g = normalize_answer(predicted), normalize_answer(gold)
    if p is None or g is None:
        return False
    if p == g:
        return True
    pi, gi = _as_int(p), _as_int(g)
    if pi is not None and gi is not None:
        return pi == gi
    return _math_verify_equal(p, g)


def _math_verify_equal(predicted: str, gold: str) -> bool:
    from math_verify import parse, verify  # imported lazily: it is slow to import

    try:
        gold_parsed = parse(f"${gold}$")
        pred_parsed = parse(f"${predicted}$")
        return bool(gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed))
    except Exception:  # math-verify raises on some malformed LaTeX; such an answer is not a match
        return False
