from lightning_da.formats import final_answer
from lightning_da.judges.base import Judge, Verdict
from lightning_da.judges.llama_guard import LlamaGuardJudge, parse_llama_guard
from lightning_da.judges.refusal_prefix import RefusalPrefixJudge
from lightning_da.judges.strongreject_rubric import StrongRejectRubricJudge, parse_rubric
from lightning_da.judges.wildguard import WildGuardJudge, parse_wildguard

__all__ = [
    "Judge", "LlamaGuardJudge", "RefusalPrefixJudge", "StrongRejectRubricJudge", "Verdict", "WildGuardJudge",
    "final_answer", "parse_llama_guard", "parse_rubric", "parse_wildguard",
]
