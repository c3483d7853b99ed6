from lightning_da.generation.candidates import (
    Completion,
    decode_completions,
    flatten_candidates,
    sample_candidates,
    sample_completions,
)
from lightning_da.generation.sampling import SamplingConfig, encode_chats, sample_chats
from lightning_da.generation.vllm_engine import VLLMGenerator, VLLMSettings, check_backend

__all__ = ["Completion", "SamplingConfig", "VLLMGenerator", "VLLMSettings", "check_backend", "decode_completions",
           "encode_chats", "flatten_candidates", "sample_candidates", "sample_chats", "sample_completions"]
