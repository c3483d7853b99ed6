"""What latent Best-of-N adds to plain sampling, and what evaluate.py's full scoring pass adds, in one run.

    .venv/bin/python benchmarks/latent_bon_overhead.py [--prompts 16 --n 8 --max-new-tokens 128 --layer 12]
    .venv/bin/python benchmarks/latent_bon_overhead.py --device cuda --dtype bfloat16 [--model-dir DIR]

SmolLM2-135M-Instruct (or any local model directory) with a LoRA adapter (random, nonzero), on CPU
by default, StrongREJECT prompts:

  plain      sample_completions: N candidates per prompt, nothing else
  latent     LatentBestOfN.generate on the same seeds: the same candidates (counted), the fine-tuned
             state at the layer kept while sampling, the base run to the layer, the pick
  full pass  score_candidates on the latent path's candidates, as evaluate.py scores them: both
             models, every layer, full-vocabulary logits (KL, perplexity, self-certainty)

Each is timed `--repeats` times in turn (plain, latent, full, plain, ...), after one warm-up call,
and the fastest run counts: CPU timings drift, and the fastest is the least disturbed.

Also checked on these candidates: the cosines of the two paths at the layer (largest difference)
and whether latent_sim picks the same candidate.

Target: the latent path adds at most 15% to plain sampling.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def student(work: Path, model_dir: str | None, dtype: str, device: str):
    """The student with a saved LoRA adapter of random nonzero weights (a fresh adapter is the identity), reloaded."""
    from lightning_da.models import EmbeddedSmolLM2, HubModel
    from lightning_da.models.lora import load_adapter, random_adapter

    source = HubModel(name=model_dir, dtype=dtype) if model_dir else EmbeddedSmolLM2(dtype=dtype)
    random_adapter(work / "adapter", source.load_model(), r=32, alpha=64, scale=0.01, lora_only=True)
    return load_adapter(source.load_model(), work / "adapter").eval().to(device), source.load_tokenizer()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--generation-batch", type=int, default=8, help="prompts per generate call")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each way; the fastest counts")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--model-dir", help="a local model directory (default: the embedded SmolLM2-135M-Instruct)")
    args = parser.parse_args()

    from lightning_da import LatentBestOfN
    from lightning_da.attribution import score_candidates
    from lightning_da.attribution.selectors import least_similar
    from lightning_da.data.benchmarks import StrongRejectBenchmark
    from lightning_da.generation import SamplingConfig, flatten_candidates, sample_completions

    model, tokenizer = student(Path(tempfile.mkdtemp(prefix="latent_bon_")), args.model_dir, args.dtype, args.device)
    prompts = [r["prompt"] for r in StrongRejectBenchmark(split="small").load()[: args.prompts]]
    sampling = SamplingConfig(temperature=0.7, top_p=1.0, max_new_tokens=args.max_new_tokens)
    bon = LatentBestOfN(model, tokenizer, layer=args.layer, n=args.n, sampling=sampling, batch_size=args.generation_batch)

    def plain():
        return sample_completions(model, tokenizer, prompts, n=args.n, sampling=sampling, batch_size=args.generation_batch,
                                  seed=0, progress=False)

    def latent():
        return bon.generate(prompts, seed=0, progress=False)

    def full():
        flat_prompts, flat = flatten_candidates(prompts, [p.completions for p in picks])
        return score_candidates(model, tokenizer, flat_prompts, [c.response_ids for c in flat], progress=False)

    LatentBestOfN(model, tokenizer, layer=args.layer, n=2, sampling=SamplingConfig(max_new_tokens=4)).generate(prompts[:1], progress=False)
    best: dict[str, float] = {}
    sampled: dict[str, list] = {"plain": [], "latent": []}  # each run's candidate ids
    parts = {"sampling": float("inf"), "selection": float("inf")}
    for _ in range(args.repeats):
        for name, run in (("plain", plain), ("latent", latent), ("full", full)):
            start = time.perf_counter()
            result = run()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
            if name == "plain":
                sampled["plain"].append([c.ids for row in result for c in row])
            elif name == "latent":
                picks = result
                sampled["latent"].append([c.ids for p in result for c in p.completions])
                if sum(bon.timings.values()) < sum(parts.values()):
                    parts = dict(bon.timings)
            else:
                scores = result

    def differing(a: list, b: list) -> int:
        return sum(x != y for x, y in zip(a, b, strict=True))

    repeat = f", plain vs plain (repeat) {differing(*sampled['plain'][:2])}" if args.repeats > 1 else ""
    cosine = scores.cosine[:, args.layer].view(len(prompts), args.n)
    difference = (torch.tensor([p.cosines for p in picks]) - cosine).abs().max().item()
    agree = sum(p.index == int(i) for p, i in zip(picks, least_similar(cosine), strict=True))
    lengths = [len(c.response_ids) for p in picks for c in p.completions]
    cut = sum(c.truncated for p in picks for c in p.completions)

    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n{args.model_dir or 'SmolLM2-135M'} + LoRA, {args.dtype}, {where}: {len(prompts)} prompts x N={args.n}, "
          f"max {args.max_new_tokens} new tokens (responses {min(lengths)}-{max(lengths)} tokens, {cut} of {len(lengths)} cut), "
          f"layer {args.layer}, fastest of {args.repeats}")
    print(f"{'':<44}{'seconds':>10}")
    print(f"{'plain N-sampling':<44}{best['plain']:>10.1f}")
    print(f"{'latent Best-of-N generate (sampling + pick)':<44}{best['latent']:>10.1f}")
    print(f"{'  of which sampling, states kept':<44}{parts['sampling']:>10.1f}")
    print(f"{'  of which selection (base to the layer)':<44}{parts['selection']:>10.1f}")
    print(f"{'full scoring pass (evaluate.py)':<44}{best['full']:>10.1f}")
    print(f"latent generate / plain sampling:              {best['latent'] / best['plain']:.3f}   "
          f"overhead {100 * (best['latent'] / best['plain'] - 1):+.1f}%, target <= +15%")
    print(f"(plain sampling + full pass) / plain sampling: {(best['plain'] + best['full']) / best['plain']:.3f}   "
          f"overhead {100 * best['full'] / best['plain']:+.1f}%")
    print(f"latent selection / full pass:                  {parts['selection'] / best['full']:.3f}")
    print(f"cosine at layer {args.layer}, latent vs full pass: max |difference| {difference:.2e}; "
          f"same pick on {agree} of {len(prompts)} prompts")
    print(f"candidates that differ by a token: latent vs plain {differing(sampled['latent'][-1], sampled['plain'][-1])}"
          f"{repeat}, of {len(lengths)}")


if __name__ == "__main__":
    main()
