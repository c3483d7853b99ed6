import json

import pytest

from lightning_da.data.prompts import HubPrompts, StrongRejectPrompts, read_local_table
from lightning_da.errors import UserError

CATEGORY_MAP = {"Violence / Physical Harm": "violence", "Privacy / Personal Data": "privacy"}
SPEC = ["violence", "privacy", "benign"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_strongreject_train_excludes_the_small_set():
    train = StrongRejectPrompts(split="train", category_map=_strongreject_map()).load()
    small = StrongRejectPrompts(split="small", category_map=_strongreject_map()).load()
    full = StrongRejectPrompts(split="full", category_map=_strongreject_map()).load()
    assert (len(full), len(small), len(train)) == (313, 60, 253)
    assert not set(train["prompt"]) & set(small["prompt"])
    assert {c for cats in full["categories"] for c in cats} == {"misinformation", "harassment", "illicit", "sexual", "violence"}


def test_limit_draws_a_seeded_mix():
    a = StrongRejectPrompts(category_map=_strongreject_map(), limit=20, seed=3).load()
    b = StrongRejectPrompts(category_map=_strongreject_map(), limit=20, seed=3).load()
    assert a["prompt"] == b["prompt"] and len(a) == 20
    assert len({c for cats in a["categories"] for c in cats}) > 1


def test_local_file_with_list_and_string_categories(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"question": "q1", "category": ["Violence / Physical Harm", "Privacy / Personal Data"]},
        {"question": "q2", "category": "violence / physical harm"},
        {"question": "q3", "category": "benign"},  # a spec key is accepted as is
    ])
    data = HubPrompts(name="UCSC-VLAA/STAR-41K", path=str(path), category_map=CATEGORY_MAP).load(SPEC)
    assert data["prompt"] == ["q1", "q2", "q3"]
    assert data["categories"] == [["violence", "privacy"], ["violence"], ["benign"]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ('{"question": "a", "category": "benign"}\n{"question": "b", "cat\n', r"malformed \(line 2"),
        ('{"question": "a", "category": "benign"}\n{"question": "", "category": "benign"}\n', "row 1: missing or empty 'question'"),
        ('{"question": "a", "category": "benign"}\n{"question": "b", "category": "weapons"}\n', "row 1: unknown category 'weapons'"),
        ('{"question": "a", "category": null}\n', "row 0: empty category"),
        ('{"prompt": "a", "category": "benign"}\n', "set data.prompt_field"),
    ],
)
def test_bad_files_fail_naming_file_and_row(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as info:
        HubPrompts(name="x", path=str(path), category_map=CATEGORY_MAP).load(SPEC)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_local_table(tmp_path / "nope.jsonl")
    (tmp_path / "p.txt").write_text("hello")
    with pytest.raises(UserError, match="unsupported format"):
        read_local_table(tmp_path / "p.txt")


def test_csv_header_only_is_empty(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("question,category\n")
    with pytest.raises(UserError, match="is empty"):
        HubPrompts(name="x", path=str(path), category_map=CATEGORY_MAP).load(SPEC)


def test_uncached_hub_dataset_names_the_override():
    with pytest.raises(UserError, match="data.path="):
        HubPrompts(name="UCSC-VLAA/STAR-41K-not-cached-anywhere").load(SPEC)


def _strongreject_map():
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return dict(compose(config_name="train").data.category_map)
