import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import datasets
import pytest

from lightning_da.data.filtering import judge_counts, judge_traces
from lightning_da.data.traces import TraceCache, content_key, generate_traces
from lightning_da.errors import UserError
from lightning_da.judges import RefusalPrefixJudge
from tests import wandb_log

PROMPTS = datasets.Dataset.from_list([{"prompt": f"prompt {i}", "categories": ["violence"]} for i in range(10)])


class Crash(Exception):
    pass


def scripted(fail_on_call: int | None = None):
    calls = []

    def generate(rows, first_index):
        calls.append(first_index)
        if fail_on_call is not None and len(calls) == fail_on_call:
            raise Crash
        return [[f"out {row['prompt']}"] for row in rows]

    return generate, calls


def test_resume_after_a_crash_loses_and_duplicates_nothing(tmp_path):
    cache = TraceCache(tmp_path, {"k": 1})
    generate, _ = scripted(fail_on_call=3)
    with pytest.raises(Crash):
        generate_traces(cache, PROMPTS, generate, batch_size=3)
    assert [r["index"] for r in cache.records()] == list(range(6)) and not cache.complete
    # A half-written shard from a kill mid-write is a temp file, never read as records.
    (cache.dir / ".shard-000006.jsonl-abc").write_text('{"index": 6, "prom')

    generate, calls = scripted()
    traces = generate_traces(TraceCache(tmp_path, {"k": 1}), PROMPTS, generate, batch_size=3)
    assert calls == [6, 9]  # only the missing prompts
    assert traces["index"] == list(range(10))
    assert traces["output"] == [f"out prompt {i}" for i in range(10)]
    assert cache.complete

    generate, calls = scripted()
    assert len(generate_traces(cache, PROMPTS, generate, batch_size=3)) == 10 and calls == []


def test_key_changes_with_any_input(tmp_path):
    base = {"teacher": {"name": "a"}, "prompts": [["p", ["x"]]], "spec": "s", "sampling": {"t": 0.7}}
    assert content_key(base) == content_key(dict(reversed(base.items())))
    for field, value in [("teacher", {"name": "b"}), ("prompts", [["q", ["x"]]]), ("spec", "t"), ("sampling", {"t": 0.6})]:
        assert content_key({**base, field: value}) != content_key(base)
    assert json.loads((TraceCache(tmp_path, base).dir / "key.json").read_text()) == base


def test_a_killed_process_resumes(tmp_path):
    """SIGKILL a real generation process (tiny model) mid-run, then finish it here."""
    script = tmp_path / "gen.py"
    script.write_text(textwrap.dedent(f"""
        import datasets, time
        from lightning_da.data.traces import TraceCache, generate_traces
        prompts = datasets.Dataset.from_list([{{"prompt": f"p{{i}}", "categories": ["violence"]}} for i in range(40)])
        def generate(rows, first):
            time.sleep(0.2)
            return [[r["prompt"] + "!"] for r in rows]
        generate_traces(TraceCache({str(tmp_path)!r}, {{"k": "kill"}}), prompts, generate, batch_size=2)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    cache = TraceCache(tmp_path, {"k": "kill"})
    deadline = time.time() + 60
    while len(cache.shards) < 3 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(cache.records())
    assert 6 <= done < 40 and not cache.complete

    prompts = datasets.Dataset.from_list([{"prompt": f"p{i}", "categories": ["violence"]} for i in range(40)])
    calls = []
    traces = generate_traces(cache, prompts, lambda rows, first: calls.append(first) or [[r["prompt"] + "!"] for r in rows], batch_size=2)
    assert traces["index"] == list(range(40)) and traces["output"] == [f"p{i}!" for i in range(40)]
    assert len(calls) == (40 - done + 1) // 2


def test_judge_splits_are_saved_and_reused(tmp_path):
    cache = TraceCache(tmp_path, {"k": 2})
    outputs = ["x</think>I'm sorry, no.", "Sure, here it is", "</think>", "I cannot help with that."]
    traces = datasets.Dataset.from_list(
        [{"index": i, "prompt": f"p{i}", "categories": ["violence"], "output": o} for i, o in enumerate(outputs)]
    )
    splits = judge_traces(cache, traces, RefusalPrefixJudge())
    assert splits["kept"]["index"] == [0, 3]
    assert splits["rejected"]["index"] == [1, 2] and splits["rejected"]["verdict"] == ["unsafe", "unparsable"]
    assert judge_counts(splits) == {"traces_kept": 2, "traces_rejected": 2, "traces_unsafe": 1, "traces_unparsable": 1}

    class Exploding:
        def identity(self):
            return RefusalPrefixJudge().identity()

        def judge(self, prompts, responses):
            raise AssertionError("cached verdicts should be reused")

    assert judge_counts(judge_traces(cache, traces, Exploding())) == judge_counts(splits)


def test_overlapping_shards_from_concurrent_jobs_count_once(tmp_path):
    cache = TraceCache(tmp_path, {"k": 3})
    cache.write_shard([{"index": i, "prompt": f"prompt {i}", "categories": ["violence"], "outputs": ["a"]} for i in range(0, 6)])
    cache.write_shard([{"index": i, "prompt": f"prompt {i}", "categories": ["violence"], "outputs": ["b"]} for i in range(4, 10)])
    assert [r["index"] for r in cache.records()] == list(range(10))
    cache.mark_complete(10)
    assert cache.dataset()["output"] == ["a"] * 6 + ["b"] * 4


def seeded_by_batch(rows, first_index):
    """A teacher whose outputs depend on the batch it is sampled in, as batched sampling does: the batch's seed (its
    first index) and its size."""
    return [[f"{row['prompt']} / seed {first_index} / batch of {len(rows)}"] for row in rows]


def test_slices_make_the_same_traces_as_one_process(tmp_path):
    """The batches are fixed by (prompt index, batch size) and each slice takes every n-th: slices run apart (in any
    order) leave the same records as one process, the cache complete only once the last slice has run."""
    one = generate_traces(TraceCache(tmp_path / "one", {"k": 1}), PROMPTS, seeded_by_batch, batch_size=3)
    cache = TraceCache(tmp_path / "sliced", {"k": 1})
    assert generate_traces(cache, PROMPTS, seeded_by_batch, batch_size=3, slice_index=2, slices=3) is None
    assert sorted(r["index"] for r in cache.records()) == [6, 7, 8] and not cache.complete  # batch 2 of 0..3
    assert generate_traces(cache, PROMPTS, seeded_by_batch, batch_size=3, slice_index=0, slices=3) is None
    sliced = generate_traces(cache, PROMPTS, seeded_by_batch, batch_size=3, slice_index=1, slices=3)
    assert cache.complete and sliced.to_list() == one.to_list()


def test_a_resume_on_another_number_of_slices_redoes_only_the_missing_batches(tmp_path):
    """Slice 0 of 2 crashes after its first batch; the rerun as one process redoes only the batches no shard holds,
    each with its own seed and composition: every prompt exactly once, the same traces as an uninterrupted run."""
    cache = TraceCache(tmp_path, {"k": 3})
    calls = []

    def crashing(rows, first_index):
        calls.append(first_index)
        if len(calls) == 2:
            raise Crash
        return seeded_by_batch(rows, first_index)

    with pytest.raises(Crash):
        generate_traces(cache, PROMPTS, crashing, batch_size=2, slice_index=0, slices=2)  # batches 0, 2, 4: dies at 2
    generate, calls = scripted()
    resumed = generate_traces(cache, PROMPTS, lambda rows, first: generate(rows, first) and seeded_by_batch(rows, first), batch_size=2)
    assert calls == [2, 4, 6, 8] and resumed["index"] == list(range(10))
    assert resumed.to_list() == generate_traces(TraceCache(tmp_path / "whole", {"k": 3}), PROMPTS, seeded_by_batch, batch_size=2).to_list()


TINY_TRACES = ["teacher=tiny_random", "data.limit=6", "teacher.batch_size=2", "teacher.sampling.max_new_tokens=4", '+judge.refusals=[""]']


def traces_cli(tmp_path, *overrides: str, multirun: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "traces.py", *(["-m"] if multirun else []), *TINY_TRACES,
                           f"paths.cache_dir={tmp_path / 'cache'}", *overrides], cwd=Path(__file__).parents[1], capture_output=True, text=True)


def test_a_multirun_over_slices_fills_the_cache_train_py_then_reads(tmp_path, compose_train, monkeypatch):
    """traces.py over two slices in parallel (the joblib launcher): one cache, complete and judged, the same traces as
    one process; then train.py finds it and loads no teacher. status=true says so, loading nothing."""
    from hydra.utils import instantiate

    from lightning_da.runs import train as train_run

    status = traces_cli(tmp_path, "status=true", f"hydra.run.dir={tmp_path / 'status0'}")
    assert status.returncode == 0 and status.stdout.endswith(": 0 of 6 prompts generated, not complete; 0 traces judged so far\n")
    done = traces_cli(tmp_path, "slice=0,1", "slices=2", "hydra/launcher=joblib", f"hydra.sweep.dir={tmp_path / 'sweep'}", multirun=True)
    assert done.returncode == 0, done.stderr[-2000:]
    logged = {}  # each job's summary in its offline W&B run: slice 0 has batches 0 and 2 (4 prompts), slice 1 batch 1
    for job in (0, 1):
        [log] = (tmp_path / "sweep").glob(f"{job}_*/wandb/offline-run-*/run-*.wandb")
        (project, _), history = wandb_log.run_and_history(log)
        logged[job] = (project, history["traces/prompts"], history["traces/traces_generated"], history["traces/slice"])
    assert logged == {0: ("lightning_da", 6, 4, 0), 1: ("lightning_da", 6, 2, 1)}
    status = traces_cli(tmp_path, "status=true", "slice=1", "slices=2", f"hydra.run.dir={tmp_path / 'status1'}")
    assert status.stdout.endswith(": 6 of 6 prompts generated (slice 1 of 2: 2 of 2), complete; judged: kept 6, rejected 0 "
                                  "(unsafe 0, unparsable 0)\n"), status.stdout

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was loaded again")

    monkeypatch.setattr("lightning_da.teacher.teacher_sampler", no_teacher)
    cfg = compose_train(*TINY_TRACES, "student=tiny_random")
    cfg.paths.cache_dir = str(tmp_path / "cache")
    splits = train_run.filtered_traces(cfg, instantiate(cfg.data))
    monkeypatch.undo()
    cfg.paths.cache_dir = str(tmp_path / "one")
    assert splits["kept"].to_list() == train_run.filtered_traces(cfg, instantiate(cfg.data))["kept"].to_list()  # as one process


def test_a_slice_outside_the_slices_is_one_line(tmp_path):
    done = traces_cli(tmp_path, "slice=2", "slices=2", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2 and (done.stdout + done.stderr).strip().splitlines()[-1].endswith("error: slice=2: set 0 <= slice < slices=2")


class CountingJudge(RefusalPrefixJudge):
    """The refusal-prefix judge, counting the traces it judges and failing on the call `fail_on` (1-based)."""

    def __init__(self, fail_on: int | None = None):
        super().__init__(refusals=[""])
        self.judged, self.calls, self.fail_on = 0, 0, fail_on

    def judge(self, prompts, responses):
        self.calls += 1
        if self.calls == self.fail_on:
            raise Crash
        self.judged += len(prompts)
        return super().judge(prompts, responses)


def test_a_crash_while_judging_redoes_only_the_judging_left(tmp_path, monkeypatch):
    """The verdicts are written a batch at a time: a judge killed on its second batch leaves the first's verdicts, and
    the rerun judges only the rest (nothing generated again), to the same splits as an uninterrupted judge."""
    from lightning_da.data import filtering

    monkeypatch.setattr(filtering, "JUDGE_BATCH", 4)
    cache = TraceCache(tmp_path, {"k": 4})
    traces = generate_traces(cache, PROMPTS, seeded_by_batch, batch_size=3)
    with pytest.raises(Crash):
        judge_traces(cache, traces, CountingJudge(fail_on=2))
    assert len(filtering.verdicts(cache, CountingJudge())) == 4 and not filtering.judged_dir(cache, CountingJudge()).exists()
    judge = CountingJudge()
    splits = judge_traces(cache, traces, judge)
    assert judge.judged == 10 - 4 and len(splits["kept"]) == 10
    whole = judge_traces(TraceCache(tmp_path / "whole", {"k": 4}), traces, CountingJudge())
    assert splits["kept"].to_list() == whole["kept"].to_list()


def test_each_slice_judges_its_own_traces_and_the_last_judges_nothing_more(tmp_path, compose_train):
    """traces.py's flow in one process: each slice judges the traces of its own batches; the slice that completes the
    cache builds the splits from every slice's verdicts without judging again."""
    from lightning_da.data.filtering import judge_slice, verdicts

    cache = TraceCache(tmp_path, {"k": 5})
    judges = []
    for s in (1, 0):
        traces = generate_traces(cache, PROMPTS, seeded_by_batch, batch_size=3, slice_index=s, slices=2)
        judges.append(CountingJudge())
        judge_slice(cache, judges[-1], n_prompts=10, batch_size=3, slice_index=s, slices=2)
    assert [j.judged for j in judges] == [4, 6]  # slice 1: batches 1 and 3 (3 + 1 prompts); slice 0: batches 0 and 2
    assert sorted(i for i, _ in verdicts(cache, judges[0])) == list(range(10))
    last = CountingJudge()
    assert len(judge_traces(cache, traces, last)["kept"]) == 10 and last.calls == 0


DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
TINY_TRAIN = ["student=tiny_random", "trainer.accelerator=cpu", "trainer.max_steps=1", "algorithm.global_batch_size=null",
              "trainer.accumulate_grad_batches=1",
              "algorithm.datamodule.batch_size=2", "algorithm.module.lora.r=4", "logger=csv"]


def train_cli(tmp_path, run: str, *overrides: str, wait: bool = True):
    argv = [sys.executable, "train.py", *TINY_TRACES, *TINY_TRAIN, f"paths.cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / run}", *overrides]
    if wait:
        return subprocess.run(argv, cwd=Path(__file__).parents[1], capture_output=True, text=True)
    return subprocess.Popen(argv, cwd=Path(__file__).parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def one_process_records(tmp_path, compose_train, *overrides: str) -> list[dict]:
    """The records of the cache one process fills, in this process (the reference)."""
    from hydra.utils import instantiate

    from lightning_da.runs.train import filtered_traces

    cfg = compose_train(*TINY_TRACES, "student=tiny_random", *overrides)
    cfg.paths.cache_dir = str(tmp_path / "one")
    filtered_traces(cfg, instantiate(cfg.data))
    [cache] = (tmp_path / "one" / "traces").iterdir()
    return read_records(cache)


def read_records(cache_dir: Path) -> list[dict]:
    """Every record of every shard, in shard order (a prompt in two shards appears twice)."""
    return [json.loads(line) for shard in sorted(cache_dir.glob("shard-*.jsonl")) for line in shard.read_text().splitlines()]


def test_two_gloo_ranks_generate_and_judge_a_slice_each_into_the_records_of_one_process(tmp_path, compose_train):
    """train.py under trainer=ddp: both ranks start before the teacher stage, each generates (a bar of its own slice)
    and judges its half of the batches, and the cache holds what one process makes, sampled, every prompt once."""
    done = train_cli(tmp_path, "ddp", *DDP)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "teacher traces (slice 0 of 2)" in done.stderr and "teacher traces (slice 1 of 2)" in done.stderr
    [cache] = (tmp_path / "cache" / "traces").iterdir()
    records = read_records(cache)
    assert [r["index"] for r in records] == list(range(6))
    assert records == one_process_records(tmp_path, compose_train)
    assert sorted(i for i, _ in json_verdicts(cache)) == list(range(6)) and (cache / "complete").exists()
    assert "6 of 6 prompts generated, complete; judged: kept 6, rejected 0 (unsafe 0, unparsable 0); this run: 6 traces in" in (
        tmp_path / "ddp" / "train.log").read_text()


def json_verdicts(cache: Path) -> list[tuple[int, int]]:
    return [(r["index"], r["sample"]) for shard in sorted(cache.glob("verdicts/*/verdicts-*.jsonl"))
            for r in map(json.loads, shard.read_text().splitlines())]


def test_a_rank_killed_mid_slice_stops_the_run_and_a_resume_on_one_process_finishes_it(tmp_path, compose_train):
    """Rank 1 killed once it has written a shard of its slice, the cache still incomplete: the run ends (rank 0 does
    not wait for ever), and train.py on one process generates only the prompts no shard holds; every prompt once, the
    records of an uninterrupted process."""
    import psutil

    long = ["data.limit=16", "teacher.batch_size=1", "teacher.sampling.max_new_tokens=48"]
    run = train_cli(tmp_path, "killed", *DDP, *long, wait=False)
    traces = tmp_path / "cache" / "traces"
    deadline, killed = time.monotonic() + 120, None
    while killed is None and time.monotonic() < deadline and run.poll() is None:
        shards = [int(p.stem.split("-")[1]) for p in traces.glob("*/shard-*.jsonl")] if traces.exists() else []
        if any(i % 2 for i in shards):  # batch_size 1: rank 1's batches are the odd prompts
            [rank1] = [p for p in psutil.Process(run.pid).children() if p.environ().get("LOCAL_RANK") == "1"]
            rank1.kill()
            killed = sorted(shards)
        time.sleep(0.01)
    assert killed is not None, "rank 1 wrote no shard"
    _, stderr = run.communicate(timeout=120)
    assert run.returncode != 0
    [cache] = traces.iterdir()
    left = read_records(cache)
    assert not (cache / "complete").exists() and 0 < len(left) < 16, f"killed after {killed}: {len(left)} of 16 left"
    resumed = train_cli(tmp_path, "resumed", *long)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"this run: {16 - len(left)} traces in" in (tmp_path / "resumed" / "train.log").read_text()
    records = read_records(cache)
    assert sorted(r["index"] for r in records) == list(range(16))  # every prompt exactly once
    assert sorted(records, key=lambda r: r["index"]) == one_process_records(tmp_path, compose_train, *long)


def test_the_ranks_of_a_traces_job_split_its_slice(tmp_path, compose_train):
    """traces.py slice=1 slices=2 on 2 ranks: rank r takes slice 1 + 2r of 4 (batches 1 and 3); slice 0 on one
    process then completes the cache, judged, equal to one process; traces.json says what the job did."""
    eight = "data.limit=8"
    first = traces_cli(tmp_path, eight, "slice=1", "slices=2", *DDP, "logger=csv", f"hydra.run.dir={tmp_path / 'job1'}")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "teacher traces (slice 1 of 4)" in first.stderr and "teacher traces (slice 3 of 4)" in first.stderr
    [cache] = (tmp_path / "cache" / "traces").iterdir()
    assert sorted(r["index"] for r in read_records(cache)) == [2, 3, 6, 7]  # batches 1 and 3 of 2 prompts
    job = json.loads((tmp_path / "job1" / "traces.json").read_text())
    assert (job["ranks"], job["traces_generated"], job["prompts_generated"], job["complete"], job["traces_judged"]) == (2, 4, 4, False, 4)
    assert first.stdout.count("prompts generated") == 1  # one summary line, from rank 0
    second = traces_cli(tmp_path, eight, "slice=0", "slices=2", "logger=csv", f"hydra.run.dir={tmp_path / 'job0'}")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "8 of 8 prompts generated (slice 0 of 2: 4 of 4), complete; judged: kept 8, rejected 0" in second.stdout
    assert read_records(cache) == one_process_records(tmp_path, compose_train, eight)


@pytest.mark.slow
def test_a_tensor_parallel_group_of_vllm_ranks_shares_one_engine_for_its_slice(tmp_path):
    """generation.backend=vllm (the stand-in) with tensor_parallel_size=2 on 2 gloo ranks: one group, one slice; its
    first rank sends each batch once, the other joins every call with nothing, so each engine of the group gets each
    request once; the records are one process's (TP 1), written once."""
    from tests.conftest import stand_in_cli

    vllm = ["generation.backend=vllm", "logger=csv"]
    events = stand_in_cli("train.py", tmp_path / "tp" / "run", *TINY_TRACES, *TINY_TRAIN, *vllm, *DDP,
                          "generation.vllm.tensor_parallel_size=2")
    requests = [e for e in events if e["event"] == "request"]
    by_rank = {rank: [json.dumps({**e, "rank": None}, sort_keys=True) for e in requests if e["rank"] == rank] for rank in "01"}
    assert len(by_rank["0"]) == 6 and by_rank["0"] == by_rank["1"]  # 3 batches of 2 prompts, each request once per engine
    one = stand_in_cli("train.py", tmp_path / "one" / "run", *TINY_TRACES, *TINY_TRAIN, *vllm)
    assert len([e for e in one if e["event"] == "request"]) == 6
    [tp_cache], [one_cache] = (list((tmp_path / name / "cache" / "traces").iterdir()) for name in ("tp", "one"))
    assert read_records(tp_cache) == read_records(one_cache) and len(read_records(tp_cache)) == 6


def test_who_shares_a_teacher(compose_train, engine_log):
    """One teacher per rank; per tensor-parallel group of vLLM ranks (a size that does not divide the ranks is one line);
    one for all ranks when an HF teacher spreads over the GPUs (rank 0 generates)."""
    from lightning_da.teacher import teacher_group_size

    cfg = compose_train(*TINY_TRACES)
    assert [teacher_group_size(cfg, world) for world in (1, 4)] == [1, 1]
    vllm = compose_train(*TINY_TRACES, "generation.backend=vllm", "generation.vllm.tensor_parallel_size=2")
    assert [teacher_group_size(vllm, world) for world in (1, 2, 4)] == [1, 2, 2]
    with pytest.raises(UserError, match=r"^generation.vllm.tensor_parallel_size=2 must divide the 3 ranks \(trainer.devices x "
                                        r"trainer.num_nodes\): each group of that many ranks shares one teacher engine$"):
        teacher_group_size(vllm, 3)
    spread = compose_train("teacher=r1_llama_70b")
    assert (spread.teacher.model.device_map, teacher_group_size(spread, 4), teacher_group_size(spread, 1)) == ("auto", 4, 1)


@pytest.mark.slow
def test_vllm_ranks_build_their_engines_together_when_only_some_slices_lack_traces(tmp_path):
    """4 gloo ranks, tensor_parallel_size 2 (the stand-in): the first group's slice is cached already, the second's
    not. vLLM makes its engines' process groups with every rank, so the first group builds its engine too (it sends
    nothing), else the second would wait for it for ever; the cache ends complete, as one process makes it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "stand_ins"), os.environ.get("PYTHONPATH", "")]),
           "VLLM_STAND_IN_LOG": str(tmp_path / "vllm.jsonl")}
    vllm = ["generation.backend=vllm", "logger=csv", "data.limit=8", f"paths.cache_dir={tmp_path / 'cache'}"]

    def run(name, *overrides):
        return subprocess.run([sys.executable, "traces.py", *TINY_TRACES, *vllm, f"hydra.run.dir={tmp_path / name}", *overrides],
                              cwd=Path(__file__).parents[1], env=env, capture_output=True, text=True, timeout=240)

    first = run("first", "slice=0", "slices=2")
    assert first.returncode == 0, first.stderr[-3000:]
    grouped = run("grouped", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=4", "generation.vllm.tensor_parallel_size=2")
    assert grouped.returncode == 0, grouped.stderr[-3000:]
    assert "8 of 8 prompts generated, complete" in grouped.stdout and "this run: 4 traces" in grouped.stdout
    events = [json.loads(line) for line in (tmp_path / "vllm.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "engine" for e in events) == 1 + 4  # the first run's, then one per rank
    [cache] = (tmp_path / "cache" / "traces").iterdir()
    assert sorted(r["index"] for r in read_records(cache)) == list(range(8))
