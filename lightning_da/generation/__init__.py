from lightning_da.generation.candidates import flatten_candidates, sample_candidates
from lightning_da.generation.sampling import SamplingConfig, encode_chats, sample_chats

__all__ = ["SamplingConfig", "flatten_candidates", "encode_chats", "sample_candidates", "sample_chats"]
