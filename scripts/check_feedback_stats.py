#!/usr/bin/env python3
"""What the verifier and refiner do in a run with the arith plugin's step-checking feedback
(`feedback = "check"`, with `ask = "end"` or `"start"`): is the verifier's verdict right (over
all verdicts, and over those whose check names an operation with its own equation, the
demonstrated format), is the answer it works out right, does the refiner fix an answer the
verdict caught, and does it turn the generator's answer from wrong to right or back. Reads the run
directory's trees.jsonl (training trees, gold answers known) and eval/results.jsonl (the gold
answer of a question is taken from any correct answer to it, so questions nobody answered are
left out of the "worked-out answer" count). Standard library only.

    python3 scripts/check_feedback_stats.py runs/arith-check-small
"""

import collections
import json
import re
import sys
from pathlib import Path

VERDICT = re.compile(r"Verdict:\s*(correct|wrong)")
# "The answer is 7." or, with two choices, "The answer is the other choice, 7." / "so the
# answer is the first choice, 7."
WORKED = re.compile(r"[Tt]he answer is(?: the (?:other|first) choice,)?\s*(-?\d+)")
# A check in the demonstrated format names a sentence's operation with its own equation ("So 6
# are added: 22 + 6 = 28."); a verifier that copies the solution's reasoning does not.
CHECKED = re.compile(r"are (added|taken away): -?\d+ [+-] \d+ = -?\d+")


def verifier_counts(c, output, generator_right, gold):
    """Counts one verifier output's verdict and worked-out answer against the truth; returns
    the worked-out answer and whether the verdict caught a wrong generator answer."""
    verdicts = VERDICT.findall(output)
    caught = bool(verdicts) and verdicts[-1] == "wrong" and not generator_right
    if verdicts:
        c["verdicts"] += 1
        c["verdicts right"] += (verdicts[-1] == "correct") == generator_right
        if CHECKED.search(output):
            c["verdicts in the check format"] += 1
            c["verdicts in the check format, right"] += (verdicts[-1] == "correct") == generator_right
    worked = WORKED.findall(output)
    if worked and gold is not None:
        c["worked-out answers"] += 1
        c["worked-out answers right"] += worked[-1] == gold
        if not generator_right:
            c["worked-out answers after a wrong generator"] += 1
            c["worked-out answers after a wrong generator, right"] += worked[-1] == gold
    return (worked[-1] if worked else None), caught


def flip(c, before, after):
    c["generator -> refiner " + ("R" if before else "W") + ">" + ("R" if after else "W")] += 1


def node_right(node, gold):
    """The plugin's own grade where the node has a reward (answering turns), else exact text."""
    if node.get("reward") is not None:
        return node["reward"] > 0.5
    return node.get("answer") is not None and node["answer"] == gold


def trees(path):
    c = collections.Counter()
    for line in open(path, encoding="utf-8"):
        tree = json.loads(line)["tree"]
        gold = tree["example"]["gold"].strip()
        nodes = tree["nodes"]
        right = [node_right(n, gold) for n in nodes]
        children = collections.defaultdict(list)
        for j, n in enumerate(nodes):
            if n["parent"] is not None:
                children[n["parent"]].append(j)
        for i, node in enumerate(nodes):
            if node["agent"] != "verifier":
                continue
            gen = node["parent"]
            worked, caught = verifier_counts(c, node["output"], right[gen], gold)
            for j in children[i]:
                flip(c, right[gen], right[j])
                if caught:
                    c["refiner after a wrong answer caught"] += 1
                    c["refiner after a wrong answer caught, right"] += right[j]
                if not right[gen] and worked == gold:
                    c["refiner right after a right worked-out answer (generator wrong)"] += right[j]
                    c["refiner after a right worked-out answer (generator wrong)"] += 1
    return c


def answered_right(turn):
    o = turn["outcome"]
    return o.get("kind") == "answer" and bool(o.get("correct"))


def evaluation(path):
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    gold = {}
    for r in rows:
        for t in r["turns"]:
            if answered_right(t):
                gold[(r["seed"], r["example_idx"])] = t["outcome"]["answer"]
    per_system = collections.defaultdict(collections.Counter)
    for r in rows:
        if r["error"] or len(r["turns"]) < 3:
            continue
        c = per_system[r["system"]]
        first, second, last = r["turns"][0], r["turns"][1], r["turns"][-1]
        c["attempts"] += 1
        flip(c, answered_right(first), answered_right(last))
        if not second.get("skipped") and second["agent"] != last["agent"]:
            verifier_counts(
                c, second["output"], answered_right(first), gold.get((r["seed"], r["example_idx"]))
            )
    return per_system


def show(title, c):
    print(title)
    for k in sorted(c):
        print(f"  {k}: {c[k]}")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    run = Path(sys.argv[1])
    if (run / "trees.jsonl").is_file():
        show(f"{run}/trees.jsonl (training trees)", trees(run / "trees.jsonl"))
    results = run / "eval" / "results.jsonl"
    if results.is_file():
        for system, c in evaluation(results).items():
            show(f"{results}: {system}, every attempt", c)


if __name__ == "__main__":
    main()
