"""The safety spec: policies per category, and the teacher prompt that puts the relevant ones in context."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

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

    def reads(self, prompts) -> dict:
        """What of the prompt rows beyond `prompt` and `categories` goes into the teacher's prompt (a cache key part)."""
        return {}

    def teacher_chat(self, row: Mapping, demonstrations: Iterable[Mapping] = ()) -> list[dict]:
        """The teacher's chat for a prompt row (`prompt`, `categories`)."""
        return self.teacher_messages(row["prompt"], row["categories"], demonstrations)


REFERENCE_REPO = "pankayaraj/Robust_Deliberative_Alignment"
_TURN = re.compile(r"<\|im_start\|>(system|user)\n(.*?)<\|im_end\|>", re.DOTALL)


def _assigned_strings(path: Path, names: tuple[str, ...]) -> dict:
    """The literal values assigned to `names` at the top of a Python script, read without running it."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError) as error:
        raise UserError(f"spec.source: cannot read {path} ({error}); point spec.source at a checkout of {REFERENCE_REPO}") from None
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and getattr(node.targets[0], "id", None) in names:
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    missing = [name for name in names if name not in found]
    if missing:
        raise UserError(f"spec.source: {path} assigns no literal {', '.join(missing)}; is it {REFERENCE_REPO}'s trace script?")
    return found


@dataclass
class ReferenceSpec:
    """The authors' spec and teacher prompt (PAPER.md 9, Appendix B), read from their trace-generation script in a
    checkout of the reference repository (`source`), never stored here: its `SAFETY_POLICIES` (markdown per
    category key) and `COT_PROMPT_TEMPLATE` (a system line and a user turn with `{prompt}`, `{spec}` and `{category}`).
    As the script: the policies of a row's categories sorted by key and joined by a blank line, and `{category}` the
    dataset's own labels as a Python list. `render`: `chat` puts the system line and the user turn through the
    teacher's chat template (each model's own markup; the templates open `<think>`); `raw` sends the script's text
    itself, whose hand-written ChatML markup every teacher got, tokenised as the script did (BOS added)."""

    source: str | None
    script: str = "create_safety_reasoning_deepseek.py"
    render: str = "chat"
    name: str = "reference"

    def __post_init__(self) -> None:
        if not self.source:
            raise UserError(f"spec=reference reads the authors' spec from their code: set spec.source=<a checkout of {REFERENCE_REPO}>")
        if self.render not in ("chat", "raw"):
            raise UserError(f"spec.render={self.render}: use chat (the teacher's chat template) or raw (the script's text)")
        path = Path(self.source).expanduser() / self.script
        if not path.is_file():
            raise UserError(f"spec.source={self.source} has no {self.script}; point spec.source at a checkout of {REFERENCE_REPO}")
        found = _assigned_strings(path, ("SAFETY_POLICIES", "COT_PROMPT_TEMPLATE"))
        self.policies, self.template = found["SAFETY_POLICIES"], found["COT_PROMPT_TEMPLATE"]
        self.turns = dict(turn.groups() for turn in _TURN.finditer(self.template))
        if set(self.turns) != {"system", "user"} or not isinstance(self.policies, dict):
            raise UserError(f"spec.source: {path}'s COT_PROMPT_TEMPLATE has no system and user turn, or SAFETY_POLICIES is not a "
                            f"dict; is it {REFERENCE_REPO}'s trace script?")

    def identity(self) -> dict:
        return {"reference": self.template, "policies": self.policies, "render": self.render}

    @property
    def categories(self) -> list[str]:
        return list(self.policies)

    def reads(self, prompts) -> dict:
        return {"labels": prompts["labels"]}  # `{category}`: the dataset's own labels

    def _fill(self, text: str, row: Mapping) -> str:
        unknown = set(row["categories"]) - set(self.policies)
        if unknown:
            raise UserError(f"spec reference has no policy for {sorted(unknown)}; known: {self.categories}")
        spec = "\n\n".join(self.policies[key] for key in sorted(set(row["categories"])))
        return text.format(prompt=row["prompt"], spec=spec, category=list(row.get("labels") or row["categories"]))

    def teacher_chat(self, row: Mapping, demonstrations: Iterable[Mapping] = ()) -> list[dict] | str:
        if list(demonstrations):
            raise UserError("spec=reference has no demonstrations (the authors' prompt is zero-shot); set teacher.demonstrations=[]")
        if self.render == "raw":
            return self._fill(self.template, row)
        return [{"role": "system", "content": self.turns["system"]}, {"role": "user", "content": self._fill(self.turns["user"], row)}]
