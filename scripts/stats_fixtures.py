#!/usr/bin/env python3
"""Fixtures of the evaluation's statistics from scipy and statsmodels (issue 28, item 5).

`host/crates/eval/tests/stats_fixtures.rs` reads the committed output,
`host/crates/eval/tests/fixtures/stats.json`, and checks malt-eval's sign test, Holm correction
and distinct-question pooling against it to 1e-12 relative, so the tests need no Python.

- `sign_test`: for each `[b, c]`, `scipy.stats.binomtest(b, b + c, 0.5,
  alternative="two-sided").pvalue`. scipy refuses `n = b + c = 0` (malt's p is 1 there, tested
  by hand in significance.rs).
- `holm`: for each list of p-values, `statsmodels.stats.multitest.multipletests(p,
  method="holm")[1]`.
- `families`: a report's comparisons in miniature. Each family has a seeded draw of question
  subsets (with repeats across seeds) and, per compared row, one `[question, reference right,
  row right]` per (seed, question) pair. This script pools each question's outcomes over the
  seeds that drew it itself (`d = reference right - row right`, summed), counts the questions
  with `d > 0` and `d < 0`, and writes those counts, binomtest's p and multipletests' Holm p
  over the family's rows.

Install and run (from the repository root):

    python3 -m venv /tmp/statsvenv && /tmp/statsvenv/bin/pip install scipy statsmodels
    /tmp/statsvenv/bin/python scripts/stats_fixtures.py  # writes the default --out
"""

import argparse
import json
import random
import re

import scipy
import statsmodels
from scipy.stats import binomtest
from statsmodels.stats.multitest import multipletests

SIGN_TEST = [
    [1, 0], [0, 1], [2, 1], [1, 2], [3, 3], [5, 5], [5, 6], [6, 5], [8, 2], [2, 8], [10, 0],
    [0, 6], [4, 7], [15, 5], [1, 12], [0, 30], [7, 0], [29, 4], [44, 5], [18, 3], [2, 1],
    [7, 2], [26, 18], [28, 11], [25, 3], [13, 2], [23, 17], [71, 51], [60, 40], [100, 150],
    [200, 260], [530, 470], [1000, 1100], [2500, 2600], [4000, 4001], [0, 200], [3, 300],
]

HOLM = [
    [0.03, 0.5, 0.01, 0.02],
    [0.05, 0.04, 0.9],
    [0.4, 0.6],
    [0.7, 0.6],
    [0.1, 0.1],
    [0.3],
    [1.0, 1.0, 1.0],
    [0.001, 0.001, 0.002, 0.5, 0.04, 0.049, 0.0125],
    # The p-values of one committed report's 13 rows (results/arith-answer-small).
    [0.18, 1e-5, 0.011, 1e-7, 0.001, 1.0, 0.035, 0.29, 0.0095, 1e-4, 0.0074, 0.43, 0.085],
]


def sign_p(b, c):
    return float(binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)


def holm(p):
    return [float(x) for x in multipletests(p, method="holm")[1]]


def family(rng, pool, questions, seeds, rows):
    """Subsets drawn independently per seed (so questions repeat), rows of varied accuracy."""
    subsets = [rng.sample(range(pool), questions) for _ in range(seeds)]
    skill = {q: rng.random() for q in range(pool)}
    reference_acc = 0.75
    out_rows = []
    for r in range(rows):
        row_acc = [0.75, 0.7, 0.6, 0.45, 0.3, 0.74][r % 6]
        pairs = []
        for subset in subsets:
            for q in subset:
                # Both depend on the question's difficulty: repeats of a question correlate.
                ref = rng.random() < min(1.0, reference_acc + 0.3 * (skill[q] - 0.5))
                row = rng.random() < min(1.0, row_acc + 0.3 * (skill[q] - 0.5))
                pairs.append([q, ref, row])
        d = {}
        for q, ref, row in pairs:
            d[q] = d.get(q, 0) + int(ref) - int(row)
        b = sum(1 for x in d.values() if x > 0)
        c = sum(1 for x in d.values() if x < 0)
        out_rows.append(
            {
                "pairs": pairs,
                "questions": len(d),
                "reference_wins": b,
                "row_wins": c,
                "p": sign_p(b, c) if b + c > 0 else 1.0,
            }
        )
    adjusted = holm([r["p"] for r in out_rows])
    for r, a in zip(out_rows, adjusted):
        r["holm_p"] = a
    return {"pool": pool, "seeds": seeds, "questions_per_seed": questions, "rows": out_rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="host/crates/eval/tests/fixtures/stats.json")
    args = ap.parse_args()
    rng = random.Random(28)
    fixtures = {
        "versions": {"scipy": scipy.__version__, "statsmodels": statsmodels.__version__},
        "sign_test": [{"b": b, "c": c, "p": sign_p(b, c)} for b, c in SIGN_TEST],
        "holm": [{"p": p, "adjusted": holm(p)} for p in HOLM],
        "families": [
            family(rng, pool=60, questions=20, seeds=4, rows=5),
            family(rng, pool=200, questions=40, seeds=4, rows=13),
            family(rng, pool=30, questions=30, seeds=3, rows=3),
        ],
    }
    text = json.dumps(fixtures, indent=1)
    # Innermost arrays (a pair, a list of p-values) on one line each: a readable, diffable file.
    text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)
    with open(args.out, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
