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
from lightning_da.judges import RefusalPrefixJudge

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
