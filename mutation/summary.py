"""`make mutants`' summary: per module of the science, the mutants mutmut made, how many the tests killed, how
many survived, and how many are equivalent (`mutation/equivalent.toml`: a mutant that no test can kill because
the code means the same, each with one line of why). The kill rate is killed / (mutants - equivalent); a
mutant no test reaches ("no tests") counts as a survivor.

    python mutation/summary.py                      # the table (run from the repository root, after mutmut run)
    python mutation/summary.py --survivors          # and the diff of every surviving, non-equivalent mutant
    python mutation/summary.py --min-kill-rate 90   # exit 1 if a module is below it

An equivalent mutant is named by its function and its mutated lines (the `+` lines of `mutmut show`), not by
mutmut's number, which shifts when the function changes. An entry that matches no mutant (stale), or one that
the tests kill (not equivalent after all), is reported, so the file stays true.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections import Counter
from pathlib import Path

EQUIVALENT = Path(__file__).with_name("equivalent.toml")
DETECTED = {"killed", "timeout", "segfault", "caught by type check"}  # a test (or the checker) noticed the change


def mutated_lines(diff: str) -> str:
    """The mutant's own lines in `mutmut show`'s diff, stripped, one per line."""
    return "\n".join(line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++"))


def function_of(mutant: str) -> str:
    """`lightning_da.stats.x_mcnemar_exact__mutmut_3` -> `lightning_da.stats.x_mcnemar_exact`."""
    return mutant.partition("__mutmut_")[0]


def module_of(mutant: str) -> str:
    """The source file of a mutant, as the table names it (`lightning_da/attribution/signal.py`)."""
    dotted = function_of(mutant).rpartition(".")[0]
    return dotted.replace(".", "/") + ".py"


def load_results(root: Path) -> dict[str, str]:
    """Every mutant's status from mutmut's result files under `root`/mutants."""
    from mutmut.stats import status_by_exit_code

    statuses = {}
    for meta in sorted((root / "mutants").rglob("*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            statuses[name] = status_by_exit_code[code]
    if not statuses:
        raise SystemExit("no mutmut results under mutants/: run `make mutants` (or `mutmut run`) first")
    return statuses


def diff_of(name: str) -> str:
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    return get_diff_for_mutant(name)


def classify(statuses: dict[str, str], entries: list[dict], diff=diff_of) -> tuple[dict[str, str], list[str]]:
    """Each mutant's final status ("equivalent" for an entry that matches a survivor) and the problems of the
    equivalent file (entries matching nothing, or matching a mutant the tests detect)."""
    wanted = {(e["function"], e["mutated"].strip()): e for e in entries}
    matched, problems, final = set(), [], dict(statuses)
    for name, status in statuses.items():
        key = (function_of(name), mutated_lines(diff(name)))
        if key not in wanted:
            continue
        matched.add(key)
        if status in DETECTED:
            problems.append(f"{name} is listed as equivalent but the tests kill it: remove its entry")
        else:
            final[name] = "equivalent"
    problems += [f"equivalent entry for {f} ({m!r}) matches no mutant: remove or update it" for f, m in wanted.keys() - matched]
    return final, problems


def table(final: dict[str, str]) -> list[dict]:
    rows = []
    for module in sorted({module_of(n) for n in final}):
        counts = Counter(s for n, s in final.items() if module_of(n) == module)
        total, equivalent = sum(counts.values()), counts["equivalent"]
        killed = sum(counts[s] for s in DETECTED)
        rows.append({"module": module, "mutants": total, "killed": killed, "survived": total - killed - equivalent,
                     "equivalent": equivalent, "kill_rate": 100.0 * killed / max(total - equivalent, 1)})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| module | mutants | killed | survived | equivalent | kill rate |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['module']} | {r['mutants']} | {r['killed']} | {r['survived']} | {r['equivalent']} | {r['kill_rate']:.1f}% |"
              for r in rows]
    total = {k: sum(r[k] for r in rows) for k in ("mutants", "killed", "survived", "equivalent")}
    rate = 100.0 * total["killed"] / max(total["mutants"] - total["equivalent"], 1)
    lines.append(f"| all | {total['mutants']} | {total['killed']} | {total['survived']} | {total['equivalent']} | {rate:.1f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--survivors", action="store_true", help="print each surviving non-equivalent mutant's diff")
    parser.add_argument("--min-kill-rate", type=float, help="exit 1 if a module's kill rate is below this (%%)")
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path.cwd()))
    entries = tomllib.loads(EQUIVALENT.read_text()).get("equivalent", []) if EQUIVALENT.is_file() else []
    final, problems = classify(load_results(Path.cwd()), entries)
    rows = table(final)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if args.survivors:
        for name in sorted(n for n, s in final.items() if s not in DETECTED and s != "equivalent"):
            print(f"\n# {name}: {final[name]}\n{diff_of(name)}")
    for problem in problems:
        print("equivalent.toml:", problem, file=sys.stderr)
    low = [r["module"] for r in rows if args.min_kill_rate is not None and r["kill_rate"] < args.min_kill_rate]
    if low:
        print(f"below {args.min_kill_rate}%: {', '.join(low)}", file=sys.stderr)
    return 1 if problems or low else 0


if __name__ == "__main__":
    sys.exit(main())
