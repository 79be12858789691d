#!/usr/bin/env python3
"""Bradley–Terry fixtures for `eval report`, fitted independently with scikit-learn
(and checked against scipy's BFGS on the same objective).

Writes eval/tests/fixtures/bt/<name>.jsonl (rating rows, the format `eval report` reads) and
<name>.expected.json (`{"ratings": {system: elo}, "win_rate": {"a|b": rate}, ...}`).

The independent fit is Chatbot Arena's: logistic regression without intercept on one row per
battle with +1 in the column of system_a and -1 in that of system_b, label 1 if a won. A tie or
both-bad verdict becomes two rows, a win for each side, each with weight 0.5. C = 1e6 (scikit-learn's
penalty is ||w||^2 / (2C), the same vanishing ridge eval/src/report/bt.rs adds); the Elo-scale
rating is 1000 + 400 / ln(10) * w (w has mean 0 under the ridge).

Run: python3 -m venv /tmp/btvenv && /tmp/btvenv/bin/pip install scipy scikit-learn numpy
     /tmp/btvenv/bin/python scripts/gen_bt_fixtures.py
"""
import json
import math
import os

import numpy as np
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression

OUT = os.path.join(os.path.dirname(__file__), "..", "eval", "tests", "fixtures", "bt")


def battles(rng, strengths, n, tie_rate, sets):
    names = sorted(strengths)
    rows = []
    for k in range(n):
        a, b = rng.choice(len(names), size=2, replace=False)
        sa, sb = names[a], names[b]
        p = 1.0 / (1.0 + 10 ** ((strengths[sb] - strengths[sa]) / 400.0))
        u = rng.random()
        if u < tie_rate:
            winner = "tie" if rng.random() < 0.7 else "both_bad"
        elif rng.random() < p:
            winner = "a"
        else:
            winner = "b"
        rows.append({
            "prompt_id": f"p{k % 180}",
            "system_a": sa,
            "system_b": sb,
            "winner": winner,
            "rater": f"rater{k % 7}",
            "left": "a" if rng.random() < 0.5 else "b",
            "ts": 1700000000000 + k,
            "set": sets[k % len(sets)],
        })
    return rows


def fit(rows):
    names = sorted({r["system_a"] for r in rows} | {r["system_b"] for r in rows})
    idx = {n: i for i, n in enumerate(names)}
    X, y, w = [], [], []
    for r in rows:
        x = np.zeros(len(names))
        x[idx[r["system_a"]]] = 1.0
        x[idx[r["system_b"]]] = -1.0
        if r["winner"] in ("tie", "both_bad"):
            X += [x, x]
            y += [1, 0]
            w += [0.5, 0.5]
        else:
            X.append(x)
            y.append(1 if r["winner"] == "a" else 0)
            w.append(1.0)
    lr = LogisticRegression(fit_intercept=False, C=1e6, tol=1e-12, max_iter=100000, solver="lbfgs")
    lr.fit(np.array(X), np.array(y), sample_weight=np.array(w))
    theta = lr.coef_[0]
    # Second opinion: scipy's BFGS on the same penalised likelihood; the two must agree.
    X, y, w = np.array(X), np.array(y), np.array(w)

    def nll(t):
        z = X @ t
        f = np.sum(w * (np.logaddexp(0, -z) * y + np.logaddexp(0, z) * (1 - y))) + 0.5e-6 * t @ t
        g = X.T @ (w * (1.0 / (1.0 + np.exp(-z)) - y)) + 1e-6 * t
        return f, g

    t2 = minimize(nll, np.zeros(len(names)), jac=True, method="BFGS", options={"gtol": 1e-10}).x
    assert np.max(np.abs(theta - t2)) < 1e-4, (theta, t2)
    elo = 1000.0 + 400.0 / math.log(10.0) * (theta - theta.mean())
    return {n: float(e) for n, e in zip(names, elo)}


def win_rates(rows):
    acc = {}
    for r in rows:
        a, b = sorted((r["system_a"], r["system_b"]))
        s = {"a": 1.0, "b": 0.0}.get(r["winner"], 0.5)
        if a != r["system_a"]:
            s = 1.0 - s
        t = acc.setdefault(f"{a}|{b}", [0.0, 0])
        t[0] += s
        t[1] += 1
    return {k: v[0] / v[1] for k, v in sorted(acc.items())}


def write(name, rows, note):
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, f"{name}.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
    exp = {
        "note": note,
        "fit": "sklearn LogisticRegression(fit_intercept=False, C=1e6, tol=1e-12, lbfgs); ties as two half-weight rows",
        "ratings": fit(rows),
        "win_rate": win_rates(rows),
    }
    with open(os.path.join(OUT, f"{name}.expected.json"), "w") as f:
        json.dump(exp, f, indent=1, sort_keys=True)
        f.write("\n")


def main():
    rng = np.random.default_rng(20231)
    write(
        "five_systems",
        battles(rng, {"alpaca": 1010, "chatgpt": 1150, "koala": 1040, "llama": 880, "vicuna": 1090},
                2000, 0.2, ["koala", "self-instruct"]),
        "5 systems, 2000 battles, 20% ties/both-bad, seed 20231",
    )
    write(
        "two_systems",
        battles(rng, {"alpaca": 1000, "davinci": 1000}, 179, 0.1, ["self-instruct"]),
        "Alpaca's blind test scale: 2 systems, 179 battles",
    )
    write(
        "twelve_systems",
        battles(rng, {f"sys{k:02}": 1000 + 35 * k - 6 * (k % 3) for k in range(12)}, 4000, 0.15,
                ["koala", "self-instruct", "vicuna"]),
        "12 systems, 4000 battles, spread ratings",
    )


if __name__ == "__main__":
    main()
