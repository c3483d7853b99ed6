"""attack.py on the tiny random student: PAIR against the three targets with a scripted attacker and
judge (the real targets, parts, resume, summary and outputs around them), and its one-line errors."""

import json
import logging

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from lightning_da.configs import CONF_DIR
from lightning_da.errors import run_or_exit
from lightning_da.judges import RefusalPrefixJudge
from lightning_da.models.lora import random_adapter
from lightning_da.runs import attack as attack_run
from lightning_da.runs.attack import run_attack
from lightning_da.stats import paired_bootstrap


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_source):
    return random_adapter(tmp_path_factory.mktemp("adapter"), tiny_source.load_model())


def attack_cfg(tmp_path, adapter, *overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="attack", overrides=[
            "student=tiny_random", "attacker=tiny_random", f"adapter={adapter}", "benchmark.limit=3", "n_candidates=2",
            "max_new_tokens=4", "attribution.layer=1", "attack.depth=4", "attack.n_streams=2", "~logger", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    return cfg


def scripted(monkeypatch, win_round: dict):
    """The attacker proposes "s<stream>-r<round>"; the judge calls a prompt a success on the round
    `win_round[target]` gives (None: never), stream 0 only. Returns the behaviours attacked."""
    attacked = []

    def attacker_for(cfg, device):
        def attacker(requests):
            return [json.dumps({"improvement": "x", "prompt": f"s{r.stream}-r{r.round}"}) for r in requests]

        attacker.start = attacked.append
        return attacker

    def target_judging(targets):
        def scorer_for(judge):
            def score(goal, prompts, responses):
                win = win_round[score.target]
                return [(10.0, True) if win is not None and p == f"s0-r{win}" else (1.0, False) for p in prompts]

            return score

        return scorer_for

    monkeypatch.setattr(attack_run, "build_attacker", attacker_for)
    original = attack_run.PAIR

    def pair(*, attacker, target, judge, **settings):
        judge.target = next(name for name, t in built.items() if t is target)
        return original(attacker=attacker, target=target, judge=judge, **settings)

    built = {}
    original_build = attack_run.build_targets

    def build(cfg, model, base, tokenizer):
        built.update(original_build(cfg, model, base, tokenizer))
        return built

    monkeypatch.setattr(attack_run, "build_targets", build)
    monkeypatch.setattr(attack_run, "JudgeScorer", target_judging(built))
    monkeypatch.setattr(attack_run, "PAIR", pair)
    return attacked


def test_pair_against_the_three_targets_stops_early_and_counts_honestly(tmp_path, adapter, monkeypatch):
    attacked = scripted(monkeypatch, {"instruct": 1, "aligned": 3, "aligned_bon": None})
    results = run_attack(attack_cfg(tmp_path, adapter))
    targets = results["targets"]
    assert (targets["instruct"]["asr"], targets["aligned"]["asr"], targets["aligned_bon"]["asr"]) == (100.0, 100.0, 0.0)
    # Rounds until success, both streams' queries each round: 1 x 2, 3 x 2, and all 4 x 2 rounds without one.
    assert (targets["instruct"]["mean_queries"], targets["aligned"]["mean_queries"], targets["aligned_bon"]["mean_queries"]) == (2, 6, 8)
    assert targets["aligned_bon"]["mean_samples"] == 16 and targets["aligned_bon"]["samples_per_query"] == 2  # Best-of-2
    assert results["outcomes"] == {"instruct": [1, 1, 1], "aligned": [1, 1, 1], "aligned_bon": [0, 0, 0]}
    want = paired_bootstrap(torch.tensor([1, 1, 1]), torch.tensor([0, 0, 0]), seed=42).as_dict()
    assert results["pairs"]["aligned_bon_vs_aligned"]["difference"] == pytest.approx(want["difference"])
    assert results["pairs"]["aligned_bon_vs_aligned"]["mcnemar_p"] == pytest.approx(want["mcnemar_p"])
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "attack.jsonl").read_text().splitlines()]
    assert [(r["behaviour"], r["target"]) for r in records] == [(k, t) for k in range(3) for t in ("instruct", "aligned", "aligned_bon")]
    aligned = records[1]
    assert aligned["prompt"] == "s0-r3" and aligned["success"] and len(aligned["turns"]) == 6 and aligned["response"]
    assert json.loads((run / "attack_results.json").read_text()) == results and not (run / "attack.parts").exists()
    assert attacked == [k for k in range(3) for _ in range(3)]  # each behaviour, once per target


def test_a_crashed_attack_resumes_without_repeating_behaviours(tmp_path, adapter, monkeypatch):
    attacked = scripted(monkeypatch, {"instruct": 2, "aligned": None, "aligned_bon": 1})
    whole = run_attack(attack_cfg(tmp_path / "whole", adapter))
    original = attack_run.PAIR

    def crash_on_behaviour_2(**kwargs):
        pair = original(**kwargs)
        if attacked[-1] == 2:
            raise KeyboardInterrupt
        return pair

    monkeypatch.setattr(attack_run, "PAIR", crash_on_behaviour_2)
    attacked.clear()
    with pytest.raises(KeyboardInterrupt):
        run_attack(attack_cfg(tmp_path / "resumed", adapter))
    assert len(list((tmp_path / "resumed" / "run" / "attack.parts").glob("behaviour-*.jsonl"))) == 2
    monkeypatch.setattr(attack_run, "PAIR", original)
    attacked.clear()
    resumed = run_attack(attack_cfg(tmp_path / "resumed", adapter))
    assert set(attacked) == {2}  # only the behaviour not finished
    assert resumed == whole
    # Record by record: every turn's prompt, the target's sampled response and the judge's score, as if never stopped.
    records = {run: [json.loads(line) for line in (tmp_path / run / "run" / "attack.jsonl").read_text().splitlines()]
               for run in ("whole", "resumed")}
    assert records["resumed"] == records["whole"] and len(records["whole"]) == 9
    assert all(turn["response"] for r in records["whole"] for turn in r["turns"])  # responses, not only a summary


@pytest.mark.parametrize(("override", "message"), [
    ("attack.depth=0", "attack.depth=0: set it to an integer of at least 1"),
    ("attack.n_streams=0", "attack.n_streams=0: set it to an integer of at least 1"),
    ("targets=[aligned,jailbroken]", "targets=['aligned', 'jailbroken']: choose one or more of instruct, aligned, aligned_bon"),
    ("adapter=null", "set adapter=<sft run>/adapter"),
    ("scorer=vibes", "scorer=vibes; use judge"),
    ("attacker=teacher", "attacker=teacher attacks with a teacher's model: set teacher=<name>"),
])
def test_bad_settings_are_one_line_errors_before_anything_loads(tmp_path, adapter, caplog, override, message):
    with pytest.raises(SystemExit) as exited:
        run_or_exit(run_attack, attack_cfg(tmp_path, adapter, override), name="attack")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert exited.value.code == 2 and len(errors) == 1 and message in errors[0]



def test_the_resume_key_holds_everything_that_changes_a_result(tmp_path, adapter):
    """A run with another rating model (when it rates), another backend or another seed scheme does not reuse the
    finished behaviours; a rating model that does not rate changes nothing."""
    from lightning_da.runs.attack import resume_key

    judge, goals = RefusalPrefixJudge(), [("pick a lock", "Sure")]

    def key(*overrides):
        return resume_key(attack_cfg(tmp_path, adapter, *overrides), goals, judge)

    other = "rating_model={_target_:lightning_da.models.TinyRandomLlama,seed:4}"
    rating = key("scorer=rating")
    assert rating != key("scorer=rating", other) and rating["rating_model"]["seed"] == 3  # the attacker's model
    assert key() == key(other) and key()["rating_model"] is None
    assert key()["backend"] == "hf" and key("generation.backend=vllm")["backend"] == "vllm"
    assert key()["seeds"] == "calls 65536 apart"


def test_pairs_rating_scorer_runs_on_the_attackers_model(tmp_path, adapter):
    """scorer=rating: the tiny attacker never writes JSON, so nothing is rated, and nothing crashes."""
    results = run_attack(attack_cfg(tmp_path, adapter, "scorer=rating", "benchmark.limit=1", "attack.depth=1", "attack.max_attempts=1",
                                    "targets=[aligned]"))
    assert results["targets"]["aligned"] == {"asr": 0.0, "mean_queries": 0.0, "mean_samples": 0.0, "samples_per_query": 1}


def test_any_teacher_or_the_student_can_attack(tmp_path, adapter):
    teacher = attack_cfg(tmp_path, adapter, "attacker=teacher", "teacher=r1_qwen_14b")
    assert (teacher.attacker.model.name, teacher.attacker.sampling.temperature) == ("deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", 1.0)
    student = attack_cfg(tmp_path, adapter, "attacker=student")
    assert student.attacker.model._target_.endswith("TinyRandomLlama") and student.attacker.sampling.max_new_tokens == 500


def test_a_large_attacker_runs_on_vllm(tmp_path, adapter, monkeypatch):
    """generation.backend=vllm: the attacker's chats go through the engine (here the in-repo stand-in, with
    vLLM's interface), its answer begun with the JSON opening; the targets stay on the loaded student."""
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "stand_ins"))
    log = tmp_path / "vllm.jsonl"
    monkeypatch.setenv("VLLM_STAND_IN_LOG", str(log))
    try:
        results = run_attack(attack_cfg(tmp_path, adapter, "generation.backend=vllm", "benchmark.limit=1", "attack.depth=1",
                                        "attack.max_attempts=1", "targets=[aligned]", f"paths.cache_dir={tmp_path / 'cache'}"))
    finally:
        for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
            del sys.modules[name]
    engine, *requests = [json.loads(line) for line in log.read_text().splitlines()]
    assert engine["model"] and len(requests) == 2  # one request per stream of the one attempt
    from lightning_da.attack.models import OPENING_REPLY
    from lightning_da.models import TinyRandomLlama

    tokenizer = TinyRandomLlama().load_tokenizer()
    assert all(tokenizer.decode(r["prompt_token_ids"]).endswith(OPENING_REPLY) for r in requests)
    assert results["n_behaviours"] == 1
