"""Evaluation benchmarks: prompts (and, for utility, reference answers), each from the hub or a local file.
Each names its `task` (`lightning_da.tasks`: what it measures and how a response is graded)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import datasets

from lightning_da.data.prompts import read_local_table, strongreject_csv
from lightning_da.errors import UserError, check_at_least
from lightning_da.tasks import get_task


def _subset(rows: list[dict], limit: int | None, seed: int) -> list[dict]:
    if limit is not None and limit < len(rows):
        rows = random.Random(seed).sample(rows, limit)
    return rows


def _hub_rows(name: str, subset: str | None, split: str, override: str) -> list[dict]:
    try:
        return datasets.load_dataset(name, subset, split=split).to_list()
    except Exception as exc:
        raise UserError(
            f"benchmark {name} could not be loaded ({type(exc).__name__}); it is not cached here and the hub "
            f"is unreachable: set {override}=/path/to/file.jsonl"
        ) from exc


@dataclass
class HubBenchmark:
    """A benchmark on the hub (`hub_id`, `subset`, `split`) or in a local file (`path`, which wins).

    `where` keeps rows whose fields equal the given values (e.g. WildJailbreak's harmful ones);
    `template` formats the prompt from the row's fields; `opening` (every benchmark has it) opens the
    assistant turn in place of `<think>` (`formats.opening`; "" opens nothing, the student writes it);
    `category_field` and `behavior_field` carry a behaviour's category and short name into its row (attack.py's
    JailbreakBench artifacts).
    """

    name: str
    task: str
    hub_id: str | None = None
    subset: str | None = None
    split: str = "test"
    path: str | None = None
    prompt_field: str = "prompt"
    answer_field: str | None = None
    where: Mapping[str, object] = field(default_factory=dict)
    template: str | None = None
    limit: int | None = None
    seed: int = 0
    opening: str | None = None
    category_field: str | None = None
    behavior_field: str | None = None

    def __post_init__(self) -> None:
        check_at_least(self.limit, "benchmark.limit", optional=True)
        get_task(self.task, f"benchmark {self.name}")

    def _records(self) -> tuple[list[dict], str]:
        if self.path is not None:
            return read_local_table(self.path, what=f"benchmark {self.name} file"), str(self.path)
        if self.hub_id is None:
            raise UserError(f"benchmark {self.name} has no hub id; set benchmark.path=/path/to/file.jsonl")
        return _hub_rows(self.hub_id, self.hub_config(), self.split, "benchmark.path"), f"{self.hub_id}[{self.split}]"

    def hub_config(self) -> str | None:
        """The hub dataset's configuration (`subset`)."""
        return self.subset

    def _row(self, record: dict, where: str) -> dict:
        if self.template is not None:
            try:
                prompt = self.template.format(**record)
            except KeyError as exc:
                raise UserError(f"{where}: no field {exc} for the benchmark's template") from exc
        else:
            prompt = record.get(self.prompt_field)
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"{where}: missing or empty {self.prompt_field!r} (set benchmark.prompt_field)")
        answer = None
        if self.answer_field is not None:
            if record.get(self.answer_field) is None:
                raise UserError(f"{where}: no {self.answer_field!r} answer (set benchmark.answer_field)")
            answer = str(record[self.answer_field])
        extra = {key: record.get(name) for key, name in (("category", self.category_field), ("behavior", self.behavior_field)) if name}
        return {"prompt": prompt, "answer": answer, **extra}

    def load(self) -> list[dict]:
        records, source = self._records()
        records = self._curated(records, source)
        kept = [(i, r) for i, r in enumerate(records) if all(r.get(k) == v for k, v in self.where.items())]
        rows = [self._row(r, f"{source} row {i}") for i, r in kept]
        if not rows:
            raise UserError(f"benchmark {self.name}: {source} has no rows{' matching ' + str(dict(self.where)) if self.where else ''}")
        return _subset(rows, self.limit, self.seed)


    def _curated(self, records: list[dict], source: str) -> list[dict]:
        return records


# PAIR's curated 50 of AdvBench's 520 behaviours (Chao et al. 2023, data/harmful_behaviors_custom.csv): each by its row
# in AdvBench's harmful_behaviors.csv (from 0), with the category PAIR gives it.
PAIR50 = {
    1: "government,hacking", 7: "bomb", 8: "virus", 9: "social media,dangerous activity", 10: "hacking", 11: "murder",
    12: "identity theft", 13: "violence", 14: "hacking,government", 15: "financial", 16: "government,hacking",
    19: "video game,violence", 25: "misinformation,racism", 26: "misinformation", 27: "mental health,misinformation",
    28: "virus", 29: "bomb", 30: "theft", 32: "financial", 33: "financial", 34: "suicide", 37: "poisoning",
    39: "misinformation", 42: "theft", 43: "hacking", 45: "hate crime", 51: "poison,terrorism", 52: "terrorism",
    53: "piracy", 55: "bomb", 56: "hacking", 57: "stalking", 58: "drugs,illegal manufacture", 70: "terrorism",
    72: "misinformation", 73: "cheating", 74: "illegal manufacture", 75: "hate speech,social media",
    76: "child pornography", 81: "firearms", 82: "virus", 86: "stalking", 90: "hate crime", 93: "phishing", 94: "fraud",
    96: "libel", 106: "hacking", 110: "libel", 115: "poisoning,murder", 124: "theft",
}
ADVBENCH_ROWS = 520
ADVBENCH_SUBSETS = ("pair50",)


@dataclass
class AdvBench(HubBenchmark):
    """AdvBench's harmful behaviours; `subset` is not a hub configuration here (AdvBench has none) but a curated
    selection: null (all 520) or `pair50` (PAIR's 50, by their rows in the full file, with PAIR's categories)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.subset is not None and self.subset not in ADVBENCH_SUBSETS:
            raise UserError(f"benchmark.subset={self.subset}: AdvBench's curated subsets are {', '.join(ADVBENCH_SUBSETS)} "
                            "(or null: all 520 behaviours)")
        if self.subset == "pair50" and self.category_field is None:
            self.category_field = "pair50_category"

    def hub_config(self) -> str | None:
        return None  # the hub holds the one table

    def _curated(self, records: list[dict], source: str) -> list[dict]:
        if self.subset is None:
            return records
        if len(records) != ADVBENCH_ROWS:
            raise UserError(f"benchmark.subset=pair50 picks AdvBench's rows by position: {source} has {len(records)} rows, not "
                            f"AdvBench's {ADVBENCH_ROWS} (give the whole harmful_behaviors.csv as benchmark.path)")
        return [{**records[i], "pair50_category": category} for i, category in PAIR50.items()]


@dataclass
class StrongRejectBenchmark:
    """StrongREJECT from the installed package: `full` (313, the paper's) or `small` (60). Its `name` says
    which, `strongreject` or `strongreject_small`, so results and reports name the split they read."""

    split: str = "full"
    limit: int | None = None
    seed: int = 0
    name: str = field(init=False)
    task: str = "safety"
    opening: str | None = None

    def __post_init__(self) -> None:
        if self.split not in ("small", "full"):
            raise UserError(f"benchmark.split={self.split!r}: StrongREJECT has small (60 prompts) or full (313)")
        check_at_least(self.limit, "benchmark.limit", optional=True)
        self.name = "strongreject" if self.split == "full" else "strongreject_small"

    def load(self) -> list[dict]:
        records = read_local_table(strongreject_csv(self.split))
        return _subset([{"prompt": r["forbidden_prompt"], "answer": None} for r in records], self.limit, self.seed)


LETTERS = "ABCD"


@dataclass
class MMLUBenchmark:
    """MMLU (`cais/mmlu`) over a list of subjects, each question with lettered choices. `prompting: ours` asks
    for the letter (answer: the letter); `reference` asks, as the reference's script, for the letter inside
    \\boxed[ ] after "Q: ", the choices as "A) ..." (answer: "C) <the option's text>", task choice_reference)."""

    subjects: Sequence[str] = ()
    hub_id: str = "cais/mmlu"
    split: str = "test"
    path: str | None = None
    limit: int | None = None
    seed: int = 0
    name: str = "mmlu"
    task: str = "choice"
    prompting: str = "ours"
    opening: str | None = None

    def __post_init__(self) -> None:
        check_at_least(self.limit, "benchmark.limit", optional=True)
        if self.prompting not in ("ours", "reference"):
            raise UserError(f"benchmark.prompting={self.prompting}: use ours or reference")

    def load(self) -> list[dict]:
        if self.path is not None:
            records = read_local_table(self.path, what="benchmark mmlu file")
        else:
            records = [r for subject in self.subjects for r in _hub_rows(self.hub_id, subject, self.split, "benchmark.path")]
        rows = []
        for i, r in enumerate(records):
            choices, answer = r.get("choices"), r.get("answer")
            if not isinstance(choices, list) or len(choices) != 4 or answer not in (0, 1, 2, 3, *LETTERS):
                raise UserError(f"MMLU row {i}: needs `question`, four `choices` and an `answer` index or letter")
            letter = answer if isinstance(answer, str) else LETTERS[answer]
            if self.prompting == "reference":
                options = "".join(f"{LETTERS[k]}) {c}\n\n" for k, c in enumerate(choices))
                prompt = ("Q: Answer the multiple choice question below with the letter of the most appropriate choice, given "
                          "only inside \\boxed[ ], e.g. \\boxed[ B ].\n" f"Question: {r['question']}\n\n{options}")
                rows.append({"prompt": prompt, "answer": f"{letter}) {choices[LETTERS.index(letter)]}"})
                continue
            lines = [r["question"].strip(), *(f"{LETTERS[k]}. {c}" for k, c in enumerate(choices))]
            prompt = "\n".join(lines) + "\nAnswer with the letter of the correct choice."
            rows.append({"prompt": prompt, "answer": letter})
        if not rows:
            raise UserError("benchmark mmlu has no rows")
        return _subset(rows, self.limit, self.seed)


_ITEMS = ["apples", "pencils", "marbles", "stickers", "books", "coins", "cookies", "stamps"]
_NAMES = ["Ada", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo"]


@dataclass
class ArithmeticBenchmark:
    """Embedded offline utility set: generated word problems with exact integer answers, two-step
    (`steps: 2`, the default) or a single addition (`steps: 1`, within reach of a 135M model)."""

    n: int = 50
    seed: int = 0
    steps: int = 2
    name: str = "arithmetic"
    task: str = "number"
    opening: str | None = None

    def __post_init__(self) -> None:
        check_at_least(self.n, "benchmark.n")
        if self.steps not in (1, 2):
            raise UserError(f"benchmark.steps={self.steps}: use 1 or 2")

    def load(self) -> list[dict]:
        rng = random.Random(self.seed)
        rows = []
        for _ in range(self.n):
            name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
            a, b, c = rng.randint(2, 40), rng.randint(2, 40), rng.randint(2, 9)
            if self.steps == 1:
                text = f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?"
                answer = a + b
            elif rng.random() < 0.5:
                text = f"{name} has {a} {item} and buys {b} more. Then {name} gives away {c}. How many {item} does {name} have now?"
                answer = a + b - c
            else:
                text = f"{name} has {c} boxes with {a} {item} in each, and finds {b} more {item}. How many {item} does {name} have?"
                answer = c * a + b
            rows.append({"prompt": text + " Give the final answer as a number.", "answer": str(answer)})
        return rows
