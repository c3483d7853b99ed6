"""PAIR (Prompt Automatic Iterative Refinement, Chao et al. 2023), written from the paper and its authors' code.

Per behaviour (a goal and the string a jailbroken reply would open with), `n_streams` independent
conversations with an attacker model run for up to `depth` rounds, stream s under system prompt s mod their
number (PAIR's three persuasion strategies rotated, `attack.strategies`). Each round every live stream's
attacker proposes a new prompt (JSON: an `improvement` on its last try and the `prompt`), the target answers
it, and the scorer rates the answer 1-10; the attacker sees the answer and the score in its next round. The
first success stops the behaviour. A reply that is not such JSON is asked for again up to `max_attempts` times,
then that stream ends: a malformed attacker never crashes a run.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightning_da.attack.search import BehaviourResult, Search, Turn
from lightning_da.errors import check_at_least


@dataclass
class PAIR(Search):
    n_streams: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        check_at_least(self.n_streams, "attack.n_streams")

    def attack(self, goal: str, target_str: str) -> BehaviourResult:
        histories = {s: self.opening(s, goal, target_str) for s in range(self.n_streams)}
        result = BehaviourResult(goal, target_str)
        for round_ in range(1, self.depth + 1):
            proposals = self.propose(histories, round_, result)
            for s in [s for s in histories if s not in proposals]:
                del histories[s]
            if not proposals:
                break
            prompts = [prompt for _, prompt in proposals.values()]
            responses, samples, scores = self.query(goal, prompts, result)
            result.record([Turn(s, round_, improvement, prompt, response, float(score), bool(success), int(cost))
                           for (s, (improvement, prompt)), response, (score, success), cost
                           in zip(proposals.items(), responses, scores, samples, strict=True)])
            for (s, (improvement, prompt)), response, (score, _) in zip(proposals.items(), responses, scores, strict=True):
                histories[s] = self.extended(histories[s], improvement, prompt, response, goal, score)
            if result.success:
                break
        return result
