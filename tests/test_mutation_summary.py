"""mutation/summary.py, the table `make mutants` prints: which survivors an equivalent entry or rule covers, what
the file gets wrong, and the kill rate killed / (mutants - equivalent)."""

from mutation.summary import classify, follows, markdown, table

DIFFS = {
    "m.x_f__mutmut_1": "--- a\n+++ b\n-    return zip(a, b, strict=True)\n+    return zip(a, b, )",
    "m.x_f__mutmut_2": "--- a\n+++ b\n-    return x + 1\n+    return x - 1",
    "m.x_f__mutmut_3": "--- a\n+++ b\n-    ax.set_title(t, fontsize=10)\n+    ax.set_title(t, fontsize=11)",
    "m.x_f__mutmut_4": "--- a\n+++ b\n-    ax.set_title(t, fontsize=10)\n+    ax.set_title(None, fontsize=10)",
    "m.x_g__mutmut_1": "--- a\n+++ b\n-    y = 2 * x\n+    y = 2 / x",
    "m.x_h__mutmut_1": "--- a\n+++ b\n-    ax.text(s, t, v, ha=\"center\", va=\"center\")\n+    ax.text(s, t, v, va=\"center\")",
    "m.x_h__mutmut_2": "--- a\n+++ b\n-    ax.text(s, t, v, ha=\"center\", va=\"center\")\n+    ax.text(s, t, va=\"center\")",
    "m.x_k__mutmut_1": "--- a\n+++ b\n-    device = next(model.parameters()).device\n+    device = None",
    "m.x_k__mutmut_2": "--- a\n+++ b\n-    device = next(model.parameters()).device\n+    device = \"\"",
}


def test_a_rule_covers_only_the_change_it_names():
    strict = {"from": "strict=True", "to": ["", "strict=False"]}
    assert follows(strict, DIFFS["m.x_f__mutmut_1"]) and not follows(strict, DIFFS["m.x_f__mutmut_2"])
    styling = {"from": "fontsize=10", "to": "*"}
    assert follows(styling, DIFFS["m.x_f__mutmut_3"]) and not follows(styling, DIFFS["m.x_f__mutmut_4"])  # the title is not styling
    alignment = {"from": 'ha="center"', "to": "*"}
    assert follows(alignment, DIFFS["m.x_h__mutmut_1"]) and not follows(alignment, DIFFS["m.x_h__mutmut_2"])  # the text is content
    device = {"from": "next(model.parameters()).device", "to": "None"}  # one target, not a list: the whole string
    assert follows(device, DIFFS["m.x_k__mutmut_1"]) and not follows(device, DIFFS["m.x_k__mutmut_2"])


def test_survivors_covered_are_equivalent_and_what_the_file_gets_wrong_is_reported():
    statuses = {"m.x_f__mutmut_1": "survived", "m.x_f__mutmut_2": "killed", "m.x_f__mutmut_3": "survived",
                "m.x_f__mutmut_4": "survived", "m.x_g__mutmut_1": "no tests"}
    entries = [{"function": "m.x_f", "mutated": "return x - 1", "why": "wrong: the tests kill it"},
               {"function": "m.x_g", "mutated": "y = 2 / x", "why": "w"},
               {"function": "m.x_h", "mutated": "gone", "why": "stale"}]
    rules = [{"from": "strict=True", "to": [""], "why": "w"}, {"from": "fontsize=10", "to": "*", "why": "w"},
             {"from": "dpi=120", "to": "*", "why": "matches nothing"}]
    final, problems = classify(statuses, entries, rules, DIFFS.get)
    assert final == {"m.x_f__mutmut_1": "equivalent", "m.x_f__mutmut_2": "killed", "m.x_f__mutmut_3": "equivalent",
                     "m.x_f__mutmut_4": "survived", "m.x_g__mutmut_1": "equivalent"}
    assert problems == ["m.x_f__mutmut_2 is listed as equivalent but the tests kill it: remove its entry",
                        "equivalent entry for m.x_h ('gone') matches no mutant: remove or update it",
                        "rule 'dpi=120' -> '*' matches no surviving mutant: remove it"]


def test_the_kill_rate_leaves_the_equivalent_out():
    final = {"a": "killed", "b": "killed", "c": "timeout", "d": "survived", "e": "equivalent", "f": "no tests"}
    rows = table(final, dict.fromkeys(final, "pkg/mod.py"))
    assert rows == [{"module": "pkg/mod.py", "mutants": 6, "killed": 3, "survived": 2, "equivalent": 1, "kill_rate": 60.0}]
    assert markdown(rows).splitlines()[-2:] == ["| pkg/mod.py | 6 | 3 | 2 | 1 | 60.0% |", "| all | 6 | 3 | 2 | 1 | 60.0% |"]
