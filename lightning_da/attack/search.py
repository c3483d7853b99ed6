"""What PAIR and TAP share: the attacker's requests and their tolerant parsing, asking again for a malformed
reply, the attacker's bounded history, and the record of one behaviour's search.

The models are callables, so a search is the same for Hugging Face, vLLM and scripted stand-ins:
- `attacker(requests) -> replies`: one reply per `AttackerRequest` (a conversation's chat messages, with its
  stream, round and attempt, e.g. to seed its sampling);
- `target(prompts) -> (responses, samples)`: one answer per prompt, and how many samples it drew for it (N for a
  Best-of-N target: queries are counted honestly);
- `judge(goal, prompts, responses) -> scores`: a score (1-10) per answer and whether it is a success; a scorer with
  an `unreadable` count (judgements it could not read, scored 1) has it recorded per behaviour.
"""

from __future__ import annotations

import ast
import contextlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from lightning_da.attack.prompts import FEEDBACK, OPENING, STRATEGIES, fill, strategy_prompt
from lightning_da.errors import check_at_least


def parse_attacker_reply(text: str) -> tuple[str, str] | None:
    """(improvement, prompt) from the first object in `text`, from a `{` to a `}`, that holds a non-empty string
    "prompt" (and, if present, a string "improvement"); None when there is none. As tolerant as PAIR's own parser
    (`ast.literal_eval` of the text from the first `{` to the first `}`, its line breaks removed): JSON with raw
    line breaks and tabs inside its strings (kept), single-quoted (Python) literals, and only where nothing else
    reads, PAIR's removal of line breaks. Braces inside the prompt, text or code fences around the object are fine."""
    starts = [k for k, c in enumerate(text) if c == "{"]
    ends = [k + 1 for k, c in enumerate(text) if c == "}"]
    decoder = json.JSONDecoder(strict=False)  # strict=False: control characters (a line break, a tab) in strings
    for start in starts:
        with contextlib.suppress(json.JSONDecodeError):
            if found := _proposal(decoder.raw_decode(text, start)[0]):
                return found
        for read in (ast.literal_eval, lambda piece: ast.literal_eval(piece.replace("\n", ""))):
            for end in (e for e in ends if e > start):
                with contextlib.suppress(SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
                    if found := _proposal(read(text[start:end])):
                        return found
    return None


def _proposal(value) -> tuple[str, str] | None:
    if isinstance(value, dict) and isinstance(value.get("prompt"), str) and value["prompt"].strip():
        improvement = value.get("improvement", "")
        return (improvement if isinstance(improvement, str) else json.dumps(improvement)), value["prompt"]
    return None


@dataclass(frozen=True)
class AttackerRequest:
    """What the attacker is asked for: `messages` (system, then the conversation's kept history) of `stream` (a
    PAIR stream, a TAP node) in `round`, the `attempt`-th time this round (from 0)."""

    stream: int
    round: int
    attempt: int
    messages: list[dict]


@dataclass
class Turn:
    """One prompt sent: who proposed it (`stream`; under TAP a node, with its `parent`), in which round, the target's
    answer, the score and the target samples that answer cost."""

    stream: int
    round: int
    improvement: str
    prompt: str
    response: str
    score: float
    success: bool
    samples: int
    parent: int | None = None


@dataclass
class BehaviourResult:
    """One behaviour's search: success (by the search's scorer), the target queries (prompts sent) and samples
    (drawn) until the first success or the end, the winning prompt and response, every turn, and what the search
    cost beside the target: attacker requests, asked again after a malformed reply, conversations ended by them,
    the scorer's unreadable judgements, and (TAP) prompts pruned as off the goal or beyond the width and the
    evaluator's unreadable on-topic answers."""

    goal: str
    target_str: str
    success: bool = False
    queries: int = 0
    samples: int = 0
    prompt: str | None = None
    response: str | None = None
    turns: list[Turn] = field(default_factory=list)
    ended_streams: list[int] = field(default_factory=list)  # conversations whose attacker gave no usable JSON
    attacker_requests: int = 0
    attacker_retries: int = 0
    unreadable_scores: int = 0
    pruned_off_topic: int = 0
    pruned_width: int = 0
    unreadable_on_topic: int = 0

    def best(self) -> Turn | None:
        """The winning turn, else the highest-scored (the latest of equals): the prompt to re-judge and confirm."""
        if not self.turns:
            return None
        return next((t for t in self.turns if t.success), None) or max(reversed(self.turns), key=lambda t: t.score)

    def record(self, turns: list[Turn]) -> None:
        """Sent prompts in order; the first success is the winner (every prompt of the round was sent: all counted)."""
        for turn in turns:
            self.turns.append(turn)
            self.queries, self.samples = self.queries + 1, self.samples + turn.samples
            if turn.success and not self.success:
                self.success, self.prompt, self.response = True, turn.prompt, turn.response

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Search:
    """The parts of an attacker-driven search: asking for proposals with retries, scoring what the target says,
    and each conversation's history, bounded to its last `keep_last_n` exchanges. Conversation s (a stream, a
    TAP root) gets system prompt s mod their number (`templates`: the texts, `{goal}` and `{target_str}` unfilled; by
    default PAIR's three strategies, `prompts.system_templates` resolves attack.strategies / attack.system_prompts)."""

    attacker: Callable[[list[AttackerRequest]], list[str]]
    target: Callable[[list[str]], tuple[list[str], list[int]]]
    judge: Callable[[str, list[str], list[str]], list[tuple[float, bool]]]
    depth: int = 8
    max_attempts: int = 5
    keep_last_n: int = 4  # attacker exchanges kept (its context is finite)
    templates: list[str] = field(default_factory=lambda: [strategy_prompt(s) for s in STRATEGIES])

    def __post_init__(self) -> None:
        for key in ("depth", "max_attempts", "keep_last_n"):
            check_at_least(getattr(self, key), f"attack.{key}")

    def opening(self, conversation: int, goal: str, target_str: str) -> list[dict]:
        """A new conversation: its system prompt and the request for a first prompt."""
        system = fill(self.templates[conversation % len(self.templates)], goal, target_str)
        return [{"role": "system", "content": system}, {"role": "user", "content": fill(OPENING, goal, target_str)}]

    def propose(self, asks: dict[int, list[dict]], round_: int, result: BehaviourResult) -> dict[int, tuple[str, str]]:
        """(improvement, prompt) for each conversation `asks` holds (id -> messages); one whose attacker gives no
        usable JSON after `max_attempts` asks is left out and recorded in `result.ended_streams`."""
        proposals: dict[int, tuple[str, str]] = {}
        pending = list(asks)
        for attempt in range(self.max_attempts):
            if not pending:
                break
            replies = self.attacker([AttackerRequest(s, round_, attempt, asks[s]) for s in pending])
            result.attacker_requests += len(pending)
            result.attacker_retries += len(pending) if attempt else 0
            parsed = {s: parse_attacker_reply(reply) for s, reply in zip(pending, replies, strict=True)}
            proposals.update({s: p for s, p in parsed.items() if p is not None})
            pending = [s for s, p in parsed.items() if p is None]
        result.ended_streams += pending
        return dict(sorted(proposals.items()))

    def query(self, goal: str, prompts: list[str], result: BehaviourResult) -> tuple[list[str], list[int], list[tuple[float, bool]]]:
        """The target's answers to `prompts`, their sample costs and the scorer's (score, success)."""
        responses, samples = self.target(prompts)
        scores, unreadable = counted(self.judge, goal, prompts, responses)
        result.unreadable_scores += unreadable
        return responses, samples, scores

    def extended(self, history: list[dict], improvement: str, prompt: str, response: str, goal: str, score: float) -> list[dict]:
        """`history` (system first) with the attacker's proposal and the feedback on it, cut to the last exchanges."""
        feedback = FEEDBACK.format(response=response, goal=goal, score=format_score(score))
        kept = [*history[1:], {"role": "assistant", "content": json.dumps({"improvement": improvement, "prompt": prompt})},
                {"role": "user", "content": feedback}]
        return [history[0], *kept[-(2 * self.keep_last_n + 1):]]


def counted(model, *args):
    """`model(*args)` and how many judgements it could not read in the call (a model with an `unreadable` count)."""
    before = getattr(model, "unreadable", 0)
    out = model(*args)
    return out, getattr(model, "unreadable", 0) - before


def format_score(score: float) -> str:
    return str(int(score)) if float(score).is_integer() else f"{score:.1f}"
