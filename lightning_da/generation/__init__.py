from lightning_da.generation.candidates import candidate_prefix, sample_candidates
from lightning_da.generation.sampling import SamplingConfig, encode_chats, sample_chats

__all__ = ["SamplingConfig", "candidate_prefix", "encode_chats", "sample_candidates", "sample_chats"]
