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


class ScriptedJudge:
    """The evaluation judge: a response the scorer called a success (on its target) is unsafe, unless its target is in
    `overruled`; a response the scorer never saw (a confirmation, a re-run, a replay) is judged by `unseen`."""

    measures = "ASR"

    def __init__(self, scored: dict, unseen, overruled=()):
        self.scored, self.unseen, self.overruled = scored, unseen, set(overruled)

    def identity(self):
        return {"judge": "scripted"}

    def check(self):
        pass

    def judge(self, prompts, responses):
        from lightning_da.judges import Verdict

        def unsafe(response):
            if response in self.scored:
                target, success = self.scored[response]
                return success and target not in self.overruled
            return self.unseen(response)

        return [Verdict("unsafe" if unsafe(r) else "safe") for r in responses]


def scripted(monkeypatch, win_round: dict, *, unseen=lambda response: False, overruled=()):
    """The attacker proposes "s<stream>-r<round>"; the scorer calls a prompt a success on the round `win_round[target]`
    gives (None: never), stream 0 only; the evaluation judge is a `ScriptedJudge` over what the scorer saw. Returns the
    behaviours attacked."""
    attacked, scored = [], {}

    def attacker_for(cfg, device):
        def attacker(requests):
            return [json.dumps({"improvement": "x", "prompt": f"s{r.stream}-r{r.round}"}) for r in requests]

        attacker.start = attacked.append
        return attacker

    def scorer_for(judge):
        def score(goal, prompts, responses):
            win = win_round[score.target]
            out = [(10.0, True) if win is not None and p == f"s0-r{win}" else (1.0, False) for p in prompts]
            scored.update({r: (score.target, success) for r, (_, success) in zip(responses, out, strict=True)})
            return out

        return score

    monkeypatch.setattr(attack_run, "build_attacker", attacker_for)
    monkeypatch.setattr(attack_run, "build_judge", lambda cfg: ScriptedJudge(scored, unseen, overruled))
    original = attack_run.PAIR

    def pair(*, attacker, target, judge, **settings):
        judge.target = next(name for name, t in built.items() if t is target.func)
        return original(attacker=attacker, target=target, judge=judge, **settings)

    built = {}
    original_build = attack_run.build_targets

    def build(cfg, model, base, tokenizer):
        built.update(original_build(cfg, model, base, tokenizer))
        return built

    monkeypatch.setattr(attack_run, "build_targets", build)
    monkeypatch.setattr(attack_run, "JudgeScorer", scorer_for)
    monkeypatch.setattr(attack_run, "PAIR", pair)
    return attacked


def test_pair_against_the_three_targets_stops_early_and_counts_honestly(tmp_path, adapter, monkeypatch):
    attacked = scripted(monkeypatch, {"instruct": 1, "aligned": 3, "aligned_bon": None})
    results = run_attack(attack_cfg(tmp_path, adapter, "attack.confirm_samples=0", "attack.transfer=false"))
    targets = results["targets"]
    assert (targets["instruct"]["asr"], targets["aligned"]["asr"], targets["aligned_bon"]["asr"]) == (100.0, 100.0, 0.0)
    assert [targets[t]["search_asr"] for t in targets] == [100.0, 100.0, 0.0] and targets["aligned"]["confirm_rate"] is None
    # Rounds until success, both streams' queries each round: 1 x 2, 3 x 2, and all 4 x 2 rounds without one.
    assert (targets["instruct"]["mean_queries"], targets["aligned"]["mean_queries"], targets["aligned_bon"]["mean_queries"]) == (2, 6, 8)
    assert (targets["aligned"]["queries_to_jailbreak_mean"], targets["aligned"]["queries_to_jailbreak_median"]) == (6, 6)
    assert targets["aligned_bon"]["queries_to_jailbreak_mean"] is None and targets["aligned_bon"]["total_queries"] == 24
    assert targets["aligned_bon"]["mean_samples"] == 16 and targets["aligned_bon"]["samples_per_query"] == 2  # Best-of-2
    assert targets["aligned_bon"]["total_samples"] == 48 and targets["aligned"]["attacker_requests"] == 3 * 6
    assert targets["aligned"]["attacker_retries"] == 0 and targets["aligned"]["unreadable_verdicts"] == 0
    assert results["outcomes"] == {"instruct": [1, 1, 1], "aligned": [1, 1, 1], "aligned_bon": [0, 0, 0]}
    want = paired_bootstrap(torch.tensor([1, 1, 1]), torch.tensor([0, 0, 0]), seed=42).as_dict()
    assert results["pairs"]["aligned_bon_vs_aligned"]["difference"] == pytest.approx(want["difference"])
    assert results["pairs"]["aligned_bon_vs_aligned"]["mcnemar_p"] == pytest.approx(want["mcnemar_p"])
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "attack.jsonl").read_text().splitlines()]
    assert [(r["behaviour"], r["target"]) for r in records] == [(k, t) for k in range(3) for t in ("instruct", "aligned", "aligned_bon")]
    aligned = records[1]
    assert aligned["prompt"] == "s0-r3" and aligned["success"] and len(aligned["turns"]) == 6 and aligned["response"]
    assert aligned["final"]["prompt"] == "s0-r3" and aligned["final"]["response"] == aligned["response"] and not aligned["final"]["rerun"]
    assert json.loads((run / "attack_results.json").read_text()) == results and not (run / "attack.parts").exists()
    assert attacked == [k for k in range(3) for _ in range(3)]  # each behaviour, once per target


def test_the_evaluation_judge_decides_the_rate_and_confirmations_measure_reliability(tmp_path, adapter, monkeypatch):
    """Two judges disagreeing: the scorer finds a success on every target, the evaluation judge overrules the instruct
    target's; the table's rate is the evaluation judge's, the search's beside it. Each best prompt re-sampled 3 times,
    each sample judged: the per-behaviour rate, and its mean, from the records' own samples."""
    def unseen(response):
        return len(response) % 2 == 0

    scripted(monkeypatch, {"instruct": 1, "aligned": 2, "aligned_bon": 1}, unseen=unseen, overruled={"instruct"})
    results = run_attack(attack_cfg(tmp_path, adapter, "attack.confirm_samples=3", "attack.transfer=false"))
    targets = results["targets"]
    assert (targets["instruct"]["search_asr"], targets["instruct"]["asr"]) == (100.0, 0.0)
    assert (targets["aligned"]["search_asr"], targets["aligned"]["asr"]) == (100.0, 100.0)
    records = [json.loads(line) for line in (tmp_path / "run" / "attack.jsonl").read_text().splitlines()]
    for name in ("instruct", "aligned", "aligned_bon"):
        mine = [r for r in records if r["target"] == name]
        rates = []
        for r in mine:
            confirm = r["final"]["confirm_responses"]
            assert len(confirm) == 3 and r["final"]["confirm"] == [unseen(c) for c in confirm]
            rates.append(sum(map(unseen, confirm)) / 3)
            assert r["final"]["confirm_rate"] == pytest.approx(rates[-1])
        assert targets[name]["confirm_rate"] == pytest.approx(100 * sum(rates) / len(rates), abs=0.01)
    assert len({c for r in records for c in r["final"]["confirm_responses"]}) > 1  # re-sampled, not copied


def test_a_shorter_search_budget_is_rerun_at_full_length_and_rejudged(tmp_path, adapter, monkeypatch):
    """attack.target_max_new_tokens: the search's answers are cut short; the best prompt is answered again at the
    deployment's length (max_new_tokens) and that answer is the one judged."""
    scripted(monkeypatch, {"instruct": 1, "aligned": 1, "aligned_bon": 1}, unseen=lambda response: True)
    results = run_attack(attack_cfg(tmp_path, adapter, "attack.target_max_new_tokens=2", "max_new_tokens=12", "benchmark.limit=1",
                                    "attack.confirm_samples=0", "attack.transfer=false", "targets=[aligned]"))
    record = json.loads((tmp_path / "run" / "attack.jsonl").read_text().splitlines()[0])
    from lightning_da.models import TinyRandomLlama

    tokenizer = TinyRandomLlama().load_tokenizer()
    assert all(len(tokenizer(t["response"], add_special_tokens=False)["input_ids"]) <= 3 for t in record["turns"])
    final = record["final"]
    assert final["rerun"] and final["prompt"] == "s0-r1" and final["response"] != record["response"]
    assert len(tokenizer(final["response"], add_special_tokens=False)["input_ids"]) > 3
    assert results["targets"]["aligned"]["asr"] == 100.0 and final["jailbroken"]


def test_each_targets_winning_prompts_are_replayed_on_the_others(tmp_path, adapter, monkeypatch):
    """The transfer matrix: instruct wins behaviours 0-2, aligned none, Best-of-N none; every replay lands (the judge
    calls every unseen answer unsafe): instruct->aligned 3 of 3, and paired against aligned attacked directly."""
    scripted(monkeypatch, {"instruct": 1, "aligned": None, "aligned_bon": None}, unseen=lambda response: True)
    results = run_attack(attack_cfg(tmp_path, adapter, "attack.confirm_samples=0", "attack.depth=1"))
    transfer = results["transfer"]
    assert set(transfer) == {f"{s}->{d}" for s in ("instruct", "aligned", "aligned_bon") for d in ("instruct", "aligned", "aligned_bon")
                             if s != d}
    cell = transfer["instruct->aligned"]
    assert (cell["replayed"], cell["transferred"], cell["rate"], cell["hits"]) == (3, 3, 100.0, [True, True, True])
    want = paired_bootstrap(torch.tensor([0, 0, 0]), torch.tensor([1, 1, 1]), seed=42).as_dict()
    assert cell["vs_direct"]["difference"] == pytest.approx(want["difference"])
    assert cell["vs_direct"]["mcnemar_p"] == pytest.approx(want["mcnemar_p"])
    assert transfer["aligned->instruct"] == {**transfer["aligned->instruct"], "replayed": 0, "transferred": 0, "rate": None,
                                             "hits": [None, None, None]}
    run = tmp_path / "run"
    artifact = json.loads((run / "jailbreakbench" / "instruct.json").read_text())
    assert artifact["parameters"]["attack_success_rate"] == 1.0 and artifact["parameters"]["total_number_of_queries"] == 6
    assert [sorted(j) for j in artifact["jailbreaks"]] == [sorted(["index", "goal", "behavior", "category", "prompt", "response",
                                                                   "number_of_queries", "queries_to_jailbreak", "jailbroken"])] * 3
    assert [(j["index"], j["prompt"], j["number_of_queries"], j["queries_to_jailbreak"], j["jailbroken"]) for j in artifact["jailbreaks"]] == [
        (k, "s0-r1", 2, 2, True) for k in range(3)]
    held = json.loads((run / "jailbreakbench" / "aligned.json").read_text())["jailbreaks"][0]
    assert held["jailbroken"] is False and held["queries_to_jailbreak"] is None and held["prompt"] == "s1-r1"  # the latest best


def test_a_crashed_attack_resumes_without_repeating_behaviours(tmp_path, adapter, monkeypatch):
    attacked = scripted(monkeypatch, {"instruct": 2, "aligned": None, "aligned_bon": 1})
    whole = run_attack(attack_cfg(tmp_path / "whole", adapter))
    original = attack_run.PAIR

    def crash_on_behaviour_2(**kwargs):  # the search of behaviour 2's first target
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
    ("attack.method=gcg", "attack.method=gcg: choose pair or tap"),
    ("attack.width=0", "attack.width=0: set it to an integer of at least 1"),
    ("attack.confirm_samples=-1", "attack.confirm_samples=-1: set it to an integer of at least 0"),
    ("attack.transfer=maybe", "attack.transfer=maybe: set true (replay each target's winning prompts on the others) or false"),
    ("attack.target_max_new_tokens=4", "attack.target_max_new_tokens=4 is not shorter than the deployed 4 new tokens"),
    ("attack.strategies=[flattery]", "attack.strategies=['flattery']: choose one or more of roleplay, logical_appeal, authority"),
    ("attack.system_prompts=[/no/such/prompt.txt]", "attack.system_prompts: cannot read /no/such/prompt.txt"),
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
    assert key()["seeds"] == "calls 65536 apart, phases 16384 calls"
    assert key("scorer=strongreject", other) != key("scorer=strongreject")  # the rubric's grader
    assert key("attack.method=tap", other) != key("attack.method=tap")  # TAP's on-topic evaluator
    assert key("attack.strategies=[roleplay]") != key() and key("attack.confirm_samples=1") != key()


def test_pairs_rating_scorer_runs_on_the_attackers_model(tmp_path, adapter):
    """scorer=rating: the tiny attacker never writes JSON, so nothing is rated, and nothing crashes."""
    results = run_attack(attack_cfg(tmp_path, adapter, "scorer=rating", "benchmark.limit=1", "attack.depth=1", "attack.max_attempts=1",
                                    "targets=[aligned]"))
    aligned = results["targets"]["aligned"]
    assert (aligned["asr"], aligned["mean_queries"], aligned["mean_samples"], aligned["samples_per_query"]) == (0.0, 0.0, 0.0, 1)
    assert (aligned["attacker_requests"], aligned["ended_streams"], aligned["confirm_rate"]) == (2, 2, None)  # no prompt to confirm
    assert results["measures"] == "non-refusal rate"  # the default judge only detects refusals


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


def test_tap_runs_through_attack_py_with_its_own_defaults(tmp_path, adapter):
    """attack.method=tap with depth and roots unset: TAP's own (10 levels, 1 root); the tiny attacker never writes JSON,
    so the root's 2 children are each asked twice and dropped: 4 requests, 2 retries, nothing sent, no crash."""
    from lightning_da.runs.attack import search_settings

    cfg = attack_cfg(tmp_path, adapter, "attack.method=tap", "attack.depth=null", "attack.n_streams=null", "attack.branching_factor=2",
                     "attack.max_attempts=2", "benchmark.limit=1", "targets=[aligned]")
    assert {k: search_settings(cfg)[k] for k in ("depth", "n_streams", "branching_factor", "width")} == {
        "depth": 10, "n_streams": 1, "branching_factor": 2, "width": 10}
    assert "width" not in search_settings(attack_cfg(tmp_path, adapter))  # PAIR has none
    results = run_attack(cfg)
    aligned = results["targets"]["aligned"]
    assert results["method"] == "tap" and (aligned["attacker_requests"], aligned["attacker_retries"], aligned["ended_streams"]) == (4, 2, 2)
    assert aligned["total_queries"] == 0 and aligned["pruned_off_topic"] == 0


def test_the_strongreject_scorer_drives_the_search_and_its_unreadable_grades_are_counted(tmp_path, adapter, monkeypatch):
    """scorer=strongreject: the rubric graded by rating_model (the tiny attacker's model: it never answers the rubric),
    so every answer is unreadable, scored 1 and counted; the search runs its rounds to the end."""
    def attacker_for(cfg, device):
        def attacker(requests):
            return [json.dumps({"improvement": "x", "prompt": f"s{r.stream}-r{r.round}"}) for r in requests]

        return attacker

    monkeypatch.setattr(attack_run, "build_attacker", attacker_for)
    class Short(attack_run.StrongRejectRubricJudge):  # a random grader's 1000 tokens would only be slower
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs, max_new_tokens=12)

    monkeypatch.setattr(attack_run, "StrongRejectRubricJudge", Short)
    results = run_attack(attack_cfg(tmp_path, adapter, "scorer=strongreject", "benchmark.limit=1", "attack.depth=2",
                                    "attack.confirm_samples=0", "targets=[aligned]"))
    aligned = results["targets"]["aligned"]
    assert (aligned["search_asr"], aligned["total_queries"], aligned["unreadable_scores"]) == (0.0, 4, 4)
    record = json.loads((tmp_path / "run" / "attack.jsonl").read_text())
    assert [t["score"] for t in record["turns"]] == [1.0] * 4
