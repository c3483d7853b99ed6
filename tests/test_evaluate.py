"""evaluate.py on the tiny random student with a real (random) LoRA adapter."""

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

from lightning_da.attribution import score_candidates
from lightning_da.distributed import batch_aligned_shard
from lightning_da.errors import UserError, run_or_exit
from lightning_da.models import TinyRandomLlama
from lightning_da.models.lora import load_adapter, random_adapter
from lightning_da.runs.evaluate import run_evaluate
from tests.conftest import CONF

ROOT = Path(__file__).resolve().parents[1]
SELECTORS = {"first", "latent_sim", "random", "kl", "reverse_kl", "base_perplexity", "perplexity", "high_perplexity", "self_certainty",
             "low_self_certainty", "gini", "majority_vote", "val_best_layer", "oracle_best_layer"}


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_source):
    return random_adapter(tmp_path_factory.mktemp("adapter"), tiny_source.load_model())


@pytest.fixture(scope="module")
def deep_adapter(tmp_path_factory):
    """An adapter on a 13-layer tiny student, so every selector's default layer (12) exists."""
    return random_adapter(tmp_path_factory.mktemp("deep_adapter"), TinyRandomLlama(num_hidden_layers=13, seed=1).load_model(), r=2, alpha=4)


# A judge under which the tiny random student's words split: safe iff an "e" opens the answer.
MIXED_LABELS = ("+judge.refusals=[e]", "judge.window=3")


def evaluate_cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=["student=tiny_random", "n_candidates=3", "max_new_tokens=6", "attribution.layer=1", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    return cfg


def test_safety_results_schema(tmp_path, adapter):
    cfg = evaluate_cfg(tmp_path, f"adapter={adapter}", "benchmark.limit=6", *MIXED_LABELS)
    results = dataclasses.asdict(run_evaluate(cfg))
    run = tmp_path / "run"
    assert json.loads((run / "results.json").read_text()) == json.loads(json.dumps(results))
    assert {"benchmark", "task", "judge", "n_prompts", "n_candidates", "layer", "rates", "drops", "by_layer", "schema_version"} <= set(results)
    assert (results["benchmark"], results["judge"], results["n_prompts"], results["n_candidates"], results["layer"]) == ("strongreject_small", "refusal_prefix", 6, 3, 1)
    assert (results["task"], results["rate_name"]) == ("safety", "asr")
    assert set(results["rates"]) == SELECTORS and set(results["drops"]) == SELECTORS
    assert len(results["by_layer"]) == 3  # embeddings + 2 blocks
    signal = results["signal"]  # the random model's words: some open with an "e" (safe), most not
    assert 0 < signal["n_bad"] < signal["n_candidates"] == 18
    assert set(signal["scores"]) == {"cosine@0", "cosine@1", "cosine@2", "kl", "reverse_kl", "base_perplexity", "perplexity",
                                     "self_certainty", "gini"}
    assert signal["scores"]["cosine@0"] == {"auroc": 0.5, "ci": [0.5, 0.5]}  # the shared embeddings: rounding, no signal
    assert results["evaluated"] == {"model": "tiny-random-llama", "base": "adapter disabled", "as_is": None}
    assert all(0 <= v <= 100 for v in results["rates"].values())
    records = [json.loads(line) for line in (run / "candidates.jsonl").read_text().splitlines()]
    assert len(records) == 6
    for record in records:
        assert len(record["candidates"]) == 3 and len(record["cosine_by_layer"]) == 3 and len(record["cosine_by_layer"][0]) == 3
        assert set(record["chosen"]) == SELECTORS and all(0 <= i < 3 for i in record["chosen"].values())
        assert len(record["verdicts"]) == 3 and len(record["kl"]) == 3 and len(record["gini"]) == len(record["base_perplexity"]) == 3
    assert list((run / "wandb").glob("offline-run-*"))
    # The file alone re-scores exactly: its token ids are the ones scored (text need not re-tokenise to them).
    student = instantiate(cfg.student.model)
    tokenizer, model = student.load_tokenizer(), load_adapter(student.load_model(), adapter).eval()
    prompts = [r["prompt"] for r in records for _ in r["candidate_ids"]]
    rescored = score_candidates(model, tokenizer, prompts, [ids for r in records for ids in r["candidate_ids"]], progress=False)
    assert torch.allclose(rescored.cosine, torch.tensor([c for r in records for c in r["cosine_by_layer"]]), atol=1e-6)
    assert torch.allclose(rescored.kl, torch.tensor([k for r in records for k in r["kl"]]), atol=1e-6, equal_nan=True)
    assert [tokenizer.decode(ids, skip_special_tokens=True) for r in records for ids in r["candidate_ids"]] == [
        c for r in records for c in r["candidates"]]


def test_a_model_as_it_is(tmp_path):
    """as_is: no adapter, no base; only first and the selectors that read the model alone, and no layer."""
    for as_is in ("student", "teacher"):
        results = run_evaluate(evaluate_cfg(tmp_path, f"as_is={as_is}", "teacher=tiny_random", "benchmark.limit=4", *MIXED_LABELS))
        assert set(results.rates) == {"first", "random", "perplexity", "high_perplexity", "self_certainty", "low_self_certainty",
                                      "gini", "majority_vote"}
        assert results.by_layer == [] and results.layer is None and results.base is None and results.chosen_layers == {}
        assert results.evaluated == {"model": "tiny-random-llama", "base": None, "as_is": as_is}
        if results.signal is not None:
            assert set(results.signal["scores"]) == {"perplexity", "self_certainty", "gini"} | {
                k for k, v in results.signal["scores"].items() if v is None}
            assert all(results.signal["scores"][k] is None for k in ("kl", "reverse_kl", "base_perplexity", "cosine@1"))


def test_instruct_vs_base_control(tmp_path):
    """experiment=instruct_vs_base: the student as it is against its separately loaded pretrained model
    (the tiny student's is another random seed), every selector, cosines differing from layer 0."""
    results = run_evaluate(evaluate_cfg(tmp_path, "experiment=instruct_vs_base", "benchmark.limit=4", *MIXED_LABELS))
    assert set(results.rates) == SELECTORS and len(results.by_layer) == 3 and results.base is not None
    assert results.evaluated == {"model": "tiny-random-llama", "base": "tiny-random-llama", "as_is": None}
    records = [json.loads(line) for line in (tmp_path / "run" / "candidates.jsonl").read_text().splitlines()]
    assert max(abs(1 - c[0]) for r in records for c in r["cosine_by_layer"]) > 1e-3  # other embeddings: a real base


def test_utility_results_schema(tmp_path, adapter):
    results = run_evaluate(evaluate_cfg(tmp_path, f"adapter={adapter}", "benchmark=arithmetic", "benchmark.n=5"))
    assert (results.task, results.rate_name, results.unparsable_verdicts) == ("number", "accuracy", None)
    assert results.judge == "last_number" and set(results.rates) == SELECTORS


def test_errors(tmp_path, adapter):
    with pytest.raises(UserError, match="set adapter="):
        run_evaluate(evaluate_cfg(tmp_path))
    with pytest.raises(UserError, match="as_is=teacher evaluates the teacher as it is: set teacher="):
        run_evaluate(evaluate_cfg(tmp_path, "as_is=teacher"))
    with pytest.raises(UserError, match="leave adapter= and base= unset"):
        run_evaluate(evaluate_cfg(tmp_path, "as_is=student", f"adapter={adapter}"))
    with pytest.raises(UserError, match="as_is=instruct: use student"):
        run_evaluate(evaluate_cfg(tmp_path, "as_is=instruct"))
    with pytest.raises(UserError, match="not a peft adapter"):
        run_evaluate(evaluate_cfg(tmp_path, f"adapter={tmp_path}"))
    with pytest.raises(UserError, match=r"layer 7 is outside .* 0\.\.2"):
        run_evaluate(evaluate_cfg(tmp_path, f"adapter={adapter}", "benchmark.limit=2", "attribution.layer=7"))
    with pytest.raises(UserError, match="unknown selector"):
        run_evaluate(evaluate_cfg(tmp_path, f"adapter={adapter}", "compare=[best_vibes]"))


def test_bad_layer_exits_with_one_line(tmp_path, adapter, caplog):
    """Through the CLI's entry function (`run_or_exit`), in this process."""
    cfg = evaluate_cfg(tmp_path, f"adapter={adapter}", "attribution.layer=99", "n_candidates=2", "max_new_tokens=4", "benchmark.limit=2")
    with pytest.raises(SystemExit) as exited:
        run_or_exit(run_evaluate, cfg, name="evaluate")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert exited.value.code == 2
    assert len(errors) == 1 and "attribution.layer" in errors[0]
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.parametrize(("n", "batch", "world"), [(10, 3, 2), (7, 8, 4), (16, 4, 4), (5, 1, 3), (9, 2, 1)])
def test_shards_are_whole_batches_covering_every_prompt_once(n, batch, world):
    blocks = [batch_aligned_shard(n, batch, rank, world) for rank in range(world)]
    assert [i for block in blocks for i in block] == list(range(n))
    assert all(block.start % batch == 0 for block in blocks if len(block))


OVERRIDES = ["n_candidates=3", "max_new_tokens=6", "benchmark.limit=7", "batch_size=2", "logger=csv", "trainer.accelerator=cpu"]


def outputs(run: Path) -> tuple[dict, list[dict]]:
    records = [json.loads(line) for line in (run / "candidates.jsonl").read_text().splitlines()]
    return json.loads((run / "results.json").read_text()), records


def test_cli_ddp_equals_one_process(tmp_path, adapter):
    """Two CPU ranks take whole batches each (7 prompts: 4 + 3) and gather them: the same
    candidates, scores, choices and rates as one process."""
    run_evaluate(evaluate_cfg(tmp_path / "one", f"adapter={adapter}", *OVERRIDES))  # one process: this one
    subprocess.run([sys.executable, "evaluate.py", "student=tiny_random", f"adapter={adapter}", "attribution.layer=1", *OVERRIDES,
                    "trainer=ddp", "trainer.devices=2", f"hydra.run.dir={tmp_path / 'ddp'}"],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    (single, single_records), (ddp, ddp_records) = outputs(tmp_path / "one" / "run"), outputs(tmp_path / "ddp")
    assert (tmp_path / "ddp" / "train_ddp_process_1.log").is_file()  # rank 1 ran
    assert ddp == single and ddp["n_prompts"] == 7  # rates follow from identical choices and flags
    assert [r["prompt"] for r in ddp_records] == [r["prompt"] for r in single_records]
    for a, b in zip(ddp_records, single_records, strict=True):
        assert (a["candidates"], a["chosen"], a["flags"]) == (b["candidates"], b["chosen"], b["flags"])
        assert torch.allclose(torch.tensor(a["cosine_by_layer"]), torch.tensor(b["cosine_by_layer"]), atol=1e-5)


def test_cli_runs_every_attribution_option(tmp_path, deep_adapter):
    """The real CLI, one multirun job per `attribution=` option with the configs' own defaults: each
    finishes, reports every selector, and shows the cosine at the layer its primary actually used."""
    options = sorted(p.stem for p in (CONF / "attribution").glob("*.yaml"))
    subprocess.run(
        [sys.executable, "evaluate.py", "-m", f"attribution={','.join(options)}", "student=tiny_random",
         "+student.model.num_hidden_layers=13", f"adapter={deep_adapter}", "n_candidates=3", "max_new_tokens=5",
         "benchmark.limit=4", "batch_size=2", "trainer.accelerator=cpu", f"hydra.sweep.dir={tmp_path}",
         "hydra.sweep.subdir=${hydra.runtime.choices.attribution}"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )
    for option in options:
        job = tmp_path / option
        results = json.loads((job / "results.json").read_text())
        assert set(results["rates"]) == SELECTORS and results["n_prompts"] == 4, option
        assert results["chosen_layers"]["latent_sim"] == 12  # selectors.latent_sim's own node
        layer = results["layer"]
        if option == "latent_sim":
            assert layer == 12
        elif option in ("val_best_layer", "oracle_best_layer"):
            assert 0 <= layer <= 13 and results["chosen_layers"][option] == layer
        else:
            assert layer is None
        table = json.loads(next(job.glob("wandb/offline-run-*/files/media/table/eval/candidates_*.table.json")).read_text())
        assert table["columns"][-1] == f"cosine@{12 if layer is None else layer}"
        assert all(0 <= row[1] < 3 for row in table["data"]) and len(table["data"]) == 4 * 3



def test_a_benchmarks_opening_starts_every_sampled_and_scored_candidate(tmp_path, adapter, monkeypatch):
    """benchmark.opening (the reference's GSM8K: "A: Let's think step by step.") replaces <think> where candidates are
    sampled and where they are scored, and the base's first sample too."""
    from lightning_da.attribution import scoring
    from lightning_da.formats import prefix_ids
    from lightning_da.generation import completions

    prefixes = []

    def recorded(tokenizer, prompt):
        prefixes.append(tokenizer.decode(prefix_ids(tokenizer, prompt)))
        return prefix_ids(tokenizer, prompt)

    monkeypatch.setattr(completions, "prefix_ids", recorded)
    monkeypatch.setattr(scoring, "prefix_ids", recorded)
    run_evaluate(evaluate_cfg(tmp_path, f"adapter={adapter}", "benchmark=arithmetic", "benchmark.n=2", "benchmark.opening='The answer:'"))
    assert len(prefixes) == 2 + 2 + 2 and all(p.endswith("<|im_start|>assistant\nThe answer:") for p in prefixes)  # sampled, scored, base
