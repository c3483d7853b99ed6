from lightning_da.generation.sampling import SamplingConfig, encode_chats, sample_chats

__all__ = ["SamplingConfig", "encode_chats", "sample_chats"]
