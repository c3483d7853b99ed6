"""Training data that resumes where it stopped: a crash mid-epoch, then `ckpt_path=`, sees the batches
the uninterrupted run would have seen, in the same order."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Sampler


class EpochShuffle(Sampler):
    """A fresh seeded permutation each epoch, a function of (seed, epoch) alone, so a resumed run
    sees the order the interrupted one would have (Lightning calls `set_epoch`)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist())

    def __len__(self) -> int:
        return self.n


class ResumableDataLoader(DataLoader):
    """A DataLoader that, when the run resumed inside epoch `resume_at[0]`, skips the
    `resume_at[1]` batches the interrupted run had trained on (once; later epochs run whole)."""

    def __init__(self, *args, resume_at: tuple[int, int] | None = None, **kwargs):
        # Its own generator for the workers' base seed, so that starting an iterator (again, after a
        # resume) draws nothing from the global RNG that dropout uses.
        kwargs.setdefault("generator", torch.Generator().manual_seed(0))
        super().__init__(*args, **kwargs)
        self.resume_at = resume_at

    def __iter__(self):
        epoch = getattr(self.sampler, "epoch", 0)
        skip = self.resume_at[1] if self.resume_at is not None and self.resume_at[0] == epoch else 0
        self.resume_at = None
        iterator = super().__iter__()
        for _ in range(skip):
            next(iterator, None)
        yield from iterator


class ResumesMidEpoch:
    """For a LightningDataModule: its place in the epoch goes into the checkpoint, as Lightning's own
    progress counts it (the loader's count would include the batch Lightning prefetched)."""

    resume_at: tuple[int, int] | None = None

    def state_dict(self) -> dict:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        return {"epoch": trainer.current_epoch, "batches": trainer.fit_loop.epoch_loop.batch_progress.current.processed}

    def load_state_dict(self, state: dict) -> None:
        self.resume_at = (state["epoch"], state["batches"]) if state else None
