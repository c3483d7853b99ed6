"""attack.py's numbers from its records (a line per behaviour and target): per target the evaluation judge's rate
with paired intervals between targets, the search's own rate, confirmations, StrongREJECT's score, the costs; the
transfer matrix; JailbreakBench-style artifacts."""

from __future__ import annotations

import itertools
import statistics

import torch

from lightning_da.stats import paired_bootstrap
from lightning_da.tables import format_interval, format_number, rounded

COUNTS = ("attacker_requests", "attacker_retries", "unreadable_scores", "pruned_off_topic", "pruned_width", "unreadable_on_topic")


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None


def target_summary(mine: list[dict], samples_per_query: int) -> dict:
    """One target's numbers over its behaviours' records."""
    won = [r for r in mine if r["final"]["jailbroken"]]
    to_jailbreak = [r["queries"] for r in won]
    scores = [r["final"]["score"] for r in mine if r["final"]["score"] is not None]
    confirm = [r["final"]["confirm_rate"] for r in mine]  # None: confirmations off, or no prompt (counted 0 then)
    return {
        "asr": 100 * len(won) / len(mine),
        "search_asr": 100 * sum(r["success"] for r in mine) / len(mine),
        "confirm_rate": 100 * _mean([c or 0.0 for c in confirm]) if any(c is not None for c in confirm) else None,
        "strongreject_score": _mean(scores),
        "mean_queries": _mean([r["queries"] for r in mine]), "mean_samples": _mean([r["samples"] for r in mine]),
        "queries_to_jailbreak_mean": _mean(to_jailbreak),
        "queries_to_jailbreak_median": statistics.median(to_jailbreak) if to_jailbreak else None,
        "total_queries": sum(r["queries"] for r in mine), "total_samples": sum(r["samples"] for r in mine),
        "samples_per_query": samples_per_query,
        "ended_streams": sum(len(r["ended_streams"]) for r in mine),
        "unreadable_verdicts": sum(r["final"]["unreadable_verdicts"] for r in mine),
        **{key: sum(r[key] for r in mine) for key in COUNTS},
    }


def summarize(records: list[dict], targets: list[str], *, n: int, seed: int, method: str, measures: str) -> dict:
    """Per target `target_summary`; per pair of targets the paired interval and McNemar on the evaluation judge's
    outcomes; the outcomes themselves."""
    outcomes = {t: [int(r["final"]["jailbroken"]) for r in records if r["target"] == t] for t in targets}
    per_target = {t: target_summary([r for r in records if r["target"] == t], n if t == "aligned_bon" else 1) for t in targets}
    pairs = {f"{b}_vs_{a}": paired_bootstrap(torch.tensor(outcomes[a]), torch.tensor(outcomes[b]), seed=seed).as_dict()
             for a, b in itertools.combinations(targets, 2)}
    return rounded({"method": method, "measures": measures, "n_behaviours": len(outcomes[targets[0]]), "targets": per_target,
                    "pairs": pairs, "outcomes": outcomes})


def transfer_summary(records: list[dict], replays: dict[str, dict[str, list[bool | None]]], *, seed: int) -> dict:
    """`replays[source][destination]`: per behaviour, whether the source's winning prompt jailbroke the destination (None
    where the source won nothing). Per (source, destination): the prompts replayed, those that transferred, the rate,
    and paired against the destination attacked directly (behaviours without a source prompt count as held)."""
    direct = {t: [int(r["final"]["jailbroken"]) for r in records if r["target"] == t] for t in replays}
    matrix = {}
    for source, row in replays.items():
        for destination, hits in row.items():
            replayed = [h for h in hits if h is not None]
            paired = paired_bootstrap(torch.tensor(direct[destination]), torch.tensor([int(bool(h)) for h in hits]), seed=seed)
            matrix[f"{source}->{destination}"] = {"replayed": len(replayed), "transferred": sum(replayed),
                                                  "rate": 100 * sum(replayed) / len(replayed) if replayed else None,
                                                  "vs_direct": paired.as_dict(), "hits": hits}
    return rounded(matrix)


def format_results(results: dict, transfer: dict | None = None) -> str:
    measures = results["measures"]
    lines = [f"{results['method'].upper()} on {results['n_behaviours']} behaviours; the evaluation judge measures the {measures}",
             f"{'target':<13}{measures:>18}{'search':>8}{'confirmed':>10}{'SR score':>9}{'queries':>9}{'to jb':>7}"
             f"{'samples':>9}{'attacker':>9}{'retries':>8}{'ended':>6}{'unread':>7}"]
    for t, v in results["targets"].items():
        sr = "n/a" if v["strongreject_score"] is None else f"{v['strongreject_score']:.2f}"
        to_jb = "n/a" if v["queries_to_jailbreak_mean"] is None else f"{v['queries_to_jailbreak_mean']:.1f}"
        lines.append(f"{t:<13}{format_number(v['asr']):>18}{format_number(v['search_asr']):>8}{format_number(v['confirm_rate']):>10}"
                     f"{sr:>9}{v['mean_queries']:>9.1f}{to_jb:>7}{v['mean_samples']:>9.1f}{v['attacker_requests']:>9}"
                     f"{v['attacker_retries']:>8}{v['ended_streams']:>6}{v['unreadable_scores'] + v['unreadable_verdicts']:>7}")
    for name, ci in results["pairs"].items():
        lines.append(f"{name}: {format_number(ci['difference'], ' points')} {format_interval(ci['difference_ci'])}, "
                     f"McNemar p {ci['mcnemar_p']:.3g}")
    for name, cell in (transfer or {}).items():
        lines.append(f"transfer {name}: {cell['transferred']} of {cell['replayed']} prompts ({format_number(cell['rate'])}); "
                     f"vs attacked directly {format_number(cell['vs_direct']['difference'], ' points')} "
                     f"{format_interval(cell['vs_direct']['difference_ci'])}")
    lines.append(f"{measures}: the evaluation judge on each behaviour's best prompt at the deployed length (unreadable = "
                 "jailbroken); search: the scorer's successes; confirmed: the best prompt re-sampled; queries: target prompts "
                 "per behaviour (to jb: among the jailbroken); samples: drawn (N per Best-of-N query); attacker: requests "
                 "(retries after malformed replies, ended conversations); unread: unreadable scores and verdicts.")
    return "\n".join(lines)


def jailbreakbench_artifact(records: list[dict], target: str, parameters: dict) -> dict:
    """JailbreakBench's artifact for one target: the run's parameters and, per behaviour, the goal, category, prompt,
    response, queries, queries to jailbreak and whether it was jailbroken."""
    mine = [r for r in records if r["target"] == target]
    jailbreaks = [{
        "index": r["behaviour"], "goal": r["goal"], "behavior": r.get("behavior"), "category": r.get("category"),
        "prompt": r["final"]["prompt"], "response": r["final"]["response"], "number_of_queries": r["queries"],
        "queries_to_jailbreak": r["queries"] if r["final"]["jailbroken"] else None, "jailbroken": r["final"]["jailbroken"],
    } for r in mine]
    won = sum(j["jailbroken"] for j in jailbreaks)
    return {"parameters": {**parameters, "target": target, "attack_success_rate": won / len(jailbreaks),
                           "total_number_of_jailbreaks": won, "number_of_submitted_prompts": len(jailbreaks),
                           "total_number_of_queries": sum(j["number_of_queries"] for j in jailbreaks)},
            "jailbreaks": jailbreaks}
