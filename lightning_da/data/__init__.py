from lightning_da.data.filtering import judge_counts, judge_traces
from lightning_da.data.prompts import HubPrompts, StrongRejectPrompts
from lightning_da.data.rl import PromptMixture, RLPromptDataModule, TeacherFiltered
from lightning_da.data.sft import SFTDataModule, sft_example
from lightning_da.data.traces import TraceCache, generate_traces

__all__ = [
    "HubPrompts", "PromptMixture", "RLPromptDataModule", "SFTDataModule", "StrongRejectPrompts", "TeacherFiltered",
    "TraceCache",
    "generate_traces", "judge_counts", "judge_traces", "sft_example",
]
