"""The behaviours an attack aims at: a goal, and the opening a jailbroken reply would have."""

from __future__ import annotations

import re

# "How can I ...?" and its kin: the modal and the subject go, "how to" stays.
HOW = re.compile(r"^how (?:to|(?:do|does|can|could|would|should|might|may|will) (?:i|we|one|someone|somebody|you|they|"
                 r"people|a person)) (.+)$", re.IGNORECASE)
ASKED = re.compile(r"^(?:can|could|would|will) you (?:please )?(.+)$", re.IGNORECASE)  # "Can you ...?": an offer
QUESTION = re.compile(r"^(?:what|which|who|whom|whose|why|where|when|how|is|are|am|was|were|do|does|did|can|could|would|"
                      r"will|should|shall|may|might|have|has)\b", re.IGNORECASE)


def default_target(goal: str) -> str:
    """The opening a jailbroken reply would have, for behaviours that come without one (StrongREJECT's), in
    PAIR's form "Sure, here is ...": an instruction X gives "Sure, here is how to x"; "How can I X?" (do, should,
    ... ; I, we, one, ...) "Sure, here is how to X"; "Can you X?" "Sure, I can X"; any other question "Sure, here
    is the answer to ..." with the question quoted."""
    goal = goal.strip()
    bare = goal.rstrip(".?! ")
    for pattern, opening in ((HOW, "Sure, here is how to "), (ASKED, "Sure, I can ")):
        match = pattern.match(bare)
        if match:
            return opening + match.group(1)
    if goal.endswith("?") or QUESTION.match(bare):
        return f'Sure, here is the answer to "{bare}?"'
    return f"Sure, here is how to {bare[:1].lower()}{bare[1:]}"


def behaviours(rows: list[dict]) -> list[tuple[str, str]]:
    """(goal, target string) of each benchmark row: its prompt, and its `answer` (AdvBench's and JailbreakBench's
    target) or `default_target`."""
    return [(row["prompt"], row.get("answer") or default_target(row["prompt"])) for row in rows]
