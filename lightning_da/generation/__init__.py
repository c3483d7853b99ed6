from lightning_da.generation.candidates import Completion, flatten_candidates, sample_candidates, sample_completions
from lightning_da.generation.sampling import SamplingConfig, encode_chats, sample_chats

__all__ = ["Completion", "SamplingConfig", "flatten_candidates", "encode_chats", "sample_candidates", "sample_chats",
           "sample_completions"]
