"""`make mutants`' summary: per module of the science, the mutants mutmut made, how many the tests killed, how
many survived, and how many are equivalent (`mutation/equivalent.toml`: a mutant that no test can kill because
the code means the same, each with one line of why). The kill rate is killed / (mutants - equivalent); a
mutant no test reaches ("no tests") counts as a survivor.

    python mutation/summary.py                      # the table (run from the repository root, after mutmut run)
    python mutation/summary.py --survivors          # and the diff of every surviving, non-equivalent mutant
    python mutation/summary.py --min-kill-rate 90   # exit 1 if a module is below it
    mutmut run $(python mutation/summary.py --names)   # rerun the survivors after strengthening the tests

An equivalent mutant is named by its function and its mutated lines (the `+` lines of `mutmut show`), not by
mutmut's number, which shifts when the function changes. A rule names a class of them: a line whose `from` text
became one of `to` (e.g. `strict=True` dropped from a zip of equal lengths; `to = "*"`: any change of that text),
each with its why. An entry or rule
that matches no mutant (stale), or that matches one the tests kill (not equivalent after all), is reported, so
the file stays true.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: mutmut brings `toml`
    import toml as tomllib

EQUIVALENT = Path(__file__).with_name("equivalent.toml")
DETECTED = {"killed", "timeout", "segfault", "caught by type check"}  # a test (or the checker) noticed the change


def changed(diff: str, sign: str) -> list[str]:
    """The lines of `mutmut show`'s diff on one side (`-` the original, `+` the mutant), stripped."""
    return [line[1:].strip() for line in diff.splitlines() if line.startswith(sign) and not line.startswith(sign * 3)]


def mutated_lines(diff: str) -> str:
    """The mutant's own lines, one per line: what an `[[equivalent]]` entry's `mutated` holds."""
    return "\n".join(changed(diff, "+"))


def follows(rule: dict, diff: str) -> bool:
    """Whether the mutant changed one line, and only by putting one of `rule["to"]` where `rule["from"]` was
    (`to = "*"`: anything, the argument dropped included)."""
    before, after = changed(diff, "-"), changed(diff, "+")
    if len(before) != 1 or len(after) != 1:
        return False
    old, new, start = before[0], after[0], before[0].find(rule["from"])
    targets = [rule["to"]] if isinstance(rule["to"], str) and rule["to"] != "*" else rule["to"]  # one target or a list
    while start != -1:
        head, tail = old[:start], old[start + len(rule["from"]) :]
        dropped = {head + tail.removeprefix(", "), head.removesuffix(", ") + tail}  # an argument removed with its comma
        if rule["to"] == "*" and (new in dropped or new.startswith(head) and new.endswith(tail) and len(new) >= len(head) + len(tail)):
            return True  # any change within the span
        if rule["to"] != "*" and (any(new == head + to + tail for to in targets) or "" in targets and new in dropped):
            return True
        start = old.find(rule["from"], start + 1)
    return False


def function_of(mutant: str) -> str:
    """`lightning_da.stats.x_mcnemar_exact__mutmut_3` -> `lightning_da.stats.x_mcnemar_exact`."""
    return mutant.partition("__mutmut_")[0]


def load_results(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Every mutant's status from mutmut's result files under `root`/mutants, and its source file."""
    from mutmut.stats import status_by_exit_code

    statuses, paths = {}, {}
    for meta in sorted((root / "mutants").rglob("*.py.meta")):
        source = str(meta.relative_to(root / "mutants")).removesuffix(".meta")
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            statuses[name], paths[name] = status_by_exit_code[code], source
    if not statuses:
        raise SystemExit("no mutmut results under mutants/: run `make mutants` (or `mutmut run`) first")
    return statuses, paths


def classify(statuses: dict[str, str], entries: list[dict], rules: list[dict], diff) -> tuple[dict[str, str], list[str]]:
    """Each mutant's final status ("equivalent" where an entry or rule matches a survivor) and the problems of
    the equivalent file (an entry or rule that matches nothing; an entry matching a mutant the tests kill).
    `diff(name)` is the mutant's diff; it is read for survivors, and for the killed mutants of functions an
    entry names."""
    wanted = {(e["function"], e["mutated"].strip()): e for e in entries}
    functions = {f for f, _ in wanted}
    matched, used, problems, final = set(), set(), [], dict(statuses)
    for name, status in statuses.items():
        detected = status in DETECTED
        if detected and function_of(name) not in functions:
            continue
        text = diff(name)
        key = (function_of(name), mutated_lines(text))
        if key in wanted:
            matched.add(key)
            if detected:
                problems.append(f"{name} is listed as equivalent but the tests kill it: remove its entry")
            else:
                final[name] = "equivalent"
            continue
        rule = next((k for k, r in enumerate(rules) if not detected and follows(r, text)), None)
        if rule is not None:
            used.add(rule)
            final[name] = "equivalent"
    problems += [f"equivalent entry for {f} ({m!r}) matches no mutant: remove or update it" for f, m in wanted.keys() - matched]
    problems += [f"rule {r['from']!r} -> {r['to']!r} matches no surviving mutant: remove it"
                 for k, r in enumerate(rules) if k not in used]
    return final, problems


def table(final: dict[str, str], paths: dict[str, str]) -> list[dict]:
    rows = []
    for module in sorted(set(paths.values())):
        counts = Counter(s for n, s in final.items() if paths[n] == module)
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
    parser.add_argument("--names", action="store_true", help="print only the surviving non-equivalent mutants' names")
    parser.add_argument("--min-kill-rate", type=float, help="exit 1 if a module's kill rate is below this (%%)")
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    listed = tomllib.loads(EQUIVALENT.read_text()) if EQUIVALENT.is_file() else {}
    statuses, paths = load_results(Path.cwd())

    def diff_of(name: str) -> str:
        return get_diff_for_mutant(name, path=paths[name])

    final, problems = classify(statuses, listed.get("equivalent", []), listed.get("rule", []), diff_of)
    survivors = sorted(n for n, s in final.items() if s not in DETECTED and s != "equivalent")
    if args.names:
        print("\n".join(survivors))
        return 0
    rows = table(final, paths)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if args.survivors:
        for name in survivors:
            print(f"\n# {name}: {final[name]}\n{diff_of(name)}")
    for problem in problems:
        print("equivalent.toml:", problem, file=sys.stderr)
    low = [r["module"] for r in rows if args.min_kill_rate is not None and r["kill_rate"] < args.min_kill_rate]
    if low:
        print(f"below {args.min_kill_rate}%: {', '.join(low)}", file=sys.stderr)
    return 1 if problems or low else 0


if __name__ == "__main__":
    sys.exit(main())
