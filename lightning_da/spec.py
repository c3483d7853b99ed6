"""The safety spec: policies per category, and the teacher prompt that puts the relevant ones in context."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from lightning_da.errors import UserError

RULE_KINDS = {"refuse": "Refuse", "safe_complete": "Safe-complete", "comply": "Comply"}


@dataclass
class Spec:
    """Policy texts keyed by category; `instructions` frames them for the teacher.

    `instructions` may use `{policies}` (the rendered policies of the prompt's categories)
    and `{prompt}` (the user's request).
    """

    name: str
    instructions: str
    policies: Mapping[str, Mapping] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, policy in self.policies.items():
            missing = {"title", "objective", "rules"} - set(policy)
            if missing:
                raise UserError(f"spec {self.name}: policy {key!r} lacks {sorted(missing)}")
            unknown = set(policy["rules"]) - set(RULE_KINDS)
            if unknown:
                raise UserError(f"spec {self.name}: policy {key!r} has rule kinds {sorted(unknown)}; use {sorted(RULE_KINDS)}")

    def identity(self) -> dict:
        """What the teacher sees of the spec: part of the trace cache key."""
        return {"instructions": self.instructions, "policies": self.policies}

    @property
    def categories(self) -> list[str]:
        return list(self.policies)

    def render_policies(self, categories: Iterable[str]) -> str:
        """Only the policies of `categories`, in the spec's order, each cited by its key."""
        wanted = set(categories)
        unknown = wanted - set(self.policies)
        if unknown:
            raise UserError(f"spec {self.name} has no policy for {sorted(unknown)}; known: {self.categories}")
        blocks = []
        for key, policy in self.policies.items():
            if key not in wanted:
                continue
            lines = [f"## Policy [{key}]: {policy['title']}", f"Objective: {policy['objective'].strip()}"]
            for kind, label in RULE_KINDS.items():
                for i, rule in enumerate(policy["rules"].get(kind, ()), start=1):
                    lines.append(f"- [{key}.{kind}.{i}] {label}: {rule.strip()}")
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)

    def user_turn(self, prompt: str, categories: Iterable[str]) -> dict:
        """One user turn (every chat template accepts it) holding the spec and the request."""
        text = self.instructions.format(policies=self.render_policies(categories), prompt=prompt)
        return {"role": "user", "content": text.strip()}

    def teacher_messages(self, prompt: str, categories: Iterable[str], demonstrations: Iterable[Mapping] = ()) -> list[dict]:
        """The teacher's chat: optional worked examples (each a `prompt`, its `categories` and the
        `response` to imitate, shown with the same spec), then the request itself."""
        messages = []
        for demo in demonstrations:
            messages += [self.user_turn(demo["prompt"], demo["categories"]), {"role": "assistant", "content": demo["response"].strip()}]
        return messages + [self.user_turn(prompt, categories)]
