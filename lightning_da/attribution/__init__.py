from lightning_da.attribution.scoring import CandidateScores, score_candidates

__all__ = ["CandidateScores", "score_candidates"]
