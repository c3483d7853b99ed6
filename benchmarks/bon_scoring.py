"""Best-of-N scoring cost, ours against the reference scripts' way, measured in one run.

    .venv/bin/python benchmarks/bon_scoring.py [--prompts 16 --n 8 --max-new-tokens 128]

SmolLM2-135M-Instruct with a LoRA adapter (random, nonzero) samples N candidates per StrongREJECT
prompt; then each way scores the same candidates in its own fresh process, so peak memory
(resident set above the process's post-import baseline) is its own:

  ours       the adapter disabled as base (one copy of the weights), each prompt encoded once and
             its candidates run after that cache in batches of 8, true last token, cosine at
             every layer + KL + perplexity + self-certainty
  reference  a deep copy of the model as base, right-padded batches of 4, hidden state at
             position -1 (a pad token for every shorter candidate), cosine at every layer

Peak memory = the highest resident set while scoring (weights included, loading's transient
buffers not) above the process's baseline before any weights were loaded.

Misread candidates are counted, for both ways, against the truth: each candidate alone (no
padding, no cache) through both models, cosine at every layer of its last token. A way misread a
candidate when any of its cosines is off that truth by more than 1e-5 (a pad token read instead;
the random adapter moves cosines only about 1e-3 off 1, and fp32 batching about 1e-7).

Targets: scoring at most 10% of generation time; peak memory at most 0.6x the reference way.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def rss_mb() -> float:
    """Anonymous resident memory: what the process allocated (weights, activations), not the
    file-backed pages of the mmapped safetensors, which the kernel may drop at will."""
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("RssAnon")) / 1024


class PeakRss:
    """Highest resident set seen while the block runs (polled), so model loading's transient
    double buffering does not count as scoring memory."""

    def __enter__(self):
        self.peak, self._stop = rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def load(adapter: str, *, copy_base: bool = False):
    """(student with adapter, tokenizer, base): base is a deep copy for the reference way, else None."""
    from lightning_da.models import EmbeddedSmolLM2
    from lightning_da.models.lora import load_adapter

    source = EmbeddedSmolLM2()
    tokenizer = source.load_tokenizer()
    plain = source.load_model().eval()
    base = copy.deepcopy(plain) if copy_base else None
    return load_adapter(plain, adapter).eval(), tokenizer, base


def score_ours(model, base, tokenizer, prompts, responses, batch_size):
    from lightning_da.attribution import score_candidates

    return score_candidates(model, tokenizer, prompts, responses, batch_size=batch_size, progress=False).cosine


@torch.inference_mode()
def cosine_truth(model, tokenizer, prompts, responses) -> torch.Tensor:
    """(candidates, layers + 1): each candidate alone through the student and its base, last token."""
    from lightning_da.formats import prefix_ids

    rows = []
    for prompt, response in zip(prompts, responses, strict=True):
        ids = torch.tensor([prefix_ids(tokenizer, prompt) + response])
        ft = model(input_ids=ids, output_hidden_states=True).hidden_states
        with model.disable_adapter():
            base = model(input_ids=ids, output_hidden_states=True).hidden_states
        rows.append(torch.stack([torch.nn.functional.cosine_similarity(a[0, -1], b[0, -1], dim=0) for a, b in zip(ft, base, strict=True)]))
    return torch.stack(rows)


@torch.inference_mode()
def score_reference(model, base, tokenizer, prompts, responses, batch_size):
    """The reference scripts' way: a second full copy as base, right padding, position -1."""
    from lightning_da.formats import prefix_ids

    encoded = [prefix_ids(tokenizer, p) + r for p, r in zip(prompts, responses, strict=True)]
    cosines = []
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start : start + batch_size]
        width = max(len(ids) for ids in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(batch):
            ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
        ft = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        bs = base(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        cosines.append(torch.stack([torch.nn.functional.cosine_similarity(a[:, -1], b[:, -1], dim=-1)
                                    for a, b in zip(ft, bs, strict=True)], dim=1))
    return torch.cat(cosines)


def scoring_worker(way: str, adapter: str, candidates: str) -> None:
    baseline = rss_mb()  # the interpreter and libraries, before any weights
    model, tokenizer, base = load(adapter, copy_base=way == "reference")
    data = json.loads(Path(candidates).read_text())
    fn, batch_size = (score_ours, 8) if way == "ours" else (score_reference, 4)
    with PeakRss() as peak:
        start = time.perf_counter()
        cosine = fn(model, base, tokenizer, data["prompts"], data["responses"], batch_size)
        elapsed = time.perf_counter() - start
    print(json.dumps({"seconds": elapsed, "peak_mb": peak.peak - baseline, "cosine": cosine.tolist()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--generation-batch", type=int, default=8, help="prompts per generate call")
    parser.add_argument("--worker", choices=["ours", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--adapter", help=argparse.SUPPRESS)
    parser.add_argument("--candidates", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return scoring_worker(args.worker, args.adapter, args.candidates)

    from lightning_da.data.benchmarks import StrongRejectBenchmark
    from lightning_da.generation import SamplingConfig, flatten_candidates, sample_completions
    from lightning_da.models import EmbeddedSmolLM2
    from lightning_da.models.lora import random_adapter

    work = Path(tempfile.mkdtemp(prefix="bon_scoring_"))
    random_adapter(work / "adapter", EmbeddedSmolLM2().load_model(), r=32, alpha=64, scale=0.01, lora_only=True)
    model, tokenizer, _ = load(str(work / "adapter"))

    prompts = [r["prompt"] for r in StrongRejectBenchmark(split="small").load()[: args.prompts]]
    sampling = SamplingConfig(temperature=0.7, top_p=1.0, max_new_tokens=args.max_new_tokens)
    start = time.perf_counter()
    completions = sample_completions(model, tokenizer, prompts, n=args.n, sampling=sampling, batch_size=args.generation_batch)
    generation = time.perf_counter() - start
    flat_prompts, flat = flatten_candidates(prompts, completions)
    flat = [c.response_ids for c in flat]  # token ids as sampled, the same for both ways
    (work / "candidates.json").write_text(json.dumps({"prompts": flat_prompts, "responses": flat}))
    lengths = [len(r) for r in flat]

    runs = {}
    for way in ("ours", "reference"):
        out = subprocess.run(
            [sys.executable, __file__, "--worker", way, "--adapter", str(work / "adapter"), "--candidates", str(work / "candidates.json")],
            capture_output=True, text=True, check=True,
        )
        runs[way] = json.loads(out.stdout.strip().splitlines()[-1])

    truth = cosine_truth(model, tokenizer, flat_prompts, flat)
    misread = {way: int(((torch.tensor(run["cosine"]) - truth).abs().amax(1) > 1e-5).sum()) for way, run in runs.items()}
    ours, ref = runs["ours"], runs["reference"]
    print(f"\nSmolLM2-135M + LoRA, CPU ({torch.get_num_threads()} threads): {len(prompts)} prompts x N={args.n}, "
          f"max {args.max_new_tokens} new tokens (responses {min(lengths)}-{max(lengths)} tokens)")
    print(f"{'':<28}{'seconds':>10}{'peak MB':>10}")
    print(f"{'generation':<28}{generation:>10.1f}")
    print(f"{'scoring, ours':<28}{ours['seconds']:>10.1f}{ours['peak_mb']:>10.0f}")
    print(f"{'scoring, reference way':<28}{ref['seconds']:>10.1f}{ref['peak_mb']:>10.0f}")
    print(f"scoring / generation (ours):        {ours['seconds'] / generation:.3f}   target <= 0.10")
    print(f"peak memory, ours / reference:      {ours['peak_mb'] / ref['peak_mb']:.2f}    target <= 0.60")
    print(f"scoring time, ours / reference:     {ours['seconds'] / ref['seconds']:.2f}")
    print(f"candidates misread (a cosine off the unpadded truth by > 1e-5): reference {misread['reference']}, "
          f"ours {misread['ours']}, of {len(flat)}")


if __name__ == "__main__":
    main()
