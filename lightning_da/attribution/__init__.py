from lightning_da.attribution.scoring import CandidateScores, encode_candidate, score_candidates

__all__ = ["CandidateScores", "encode_candidate", "score_candidates"]
