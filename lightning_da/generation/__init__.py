from lightning_da.generation.completions import (
    Completion,
    batch_seed,
    decode_completions,
    flatten_candidates,
    sample_candidates,
    sample_completions,
)
from lightning_da.generation.sampling import SamplingConfig
from lightning_da.generation.teacher_chats import encode_chats, sample_chats
from lightning_da.generation.vllm_engine import VLLMGenerator, VLLMSettings, candidate_sampler, check_backend

__all__ = ["Completion", "SamplingConfig", "VLLMGenerator", "VLLMSettings", "batch_seed", "candidate_sampler", "check_backend",
           "decode_completions", "encode_chats", "flatten_candidates", "sample_candidates", "sample_chats", "sample_completions"]
