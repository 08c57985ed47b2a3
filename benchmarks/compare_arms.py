"""An A/B of finished runs: each arm's absolute metric per seed, and its paired difference to the first arm.

    python benchmarks/compare_arms.py ours=runs/a_s0,runs/a_s1 shuffle=runs/b_s0,runs/b_s1

Each argument is `name=folder[,folder...]`: the run folders of one arm (one script call trains
several seeds; an arm may be several calls, e.g. `--seed 0 --num-seeds 2` and `--seed 1 --num-seeds 3`).
A seed is identified by its call's `--seed` and its index in the call (its key is
`fold_in(PRNGKey(seed), index)`), so arms run with the same calls pair up seed by seed. Prints per
arm: the seeds, the absolute metric's mean ± std (numpy's std), and against the first arm the mean
of the paired differences with a 95 % bootstrap CI (10,000 resamples of the common seeds).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

METRIC = "absolute/episode_return"


def arm_scores(folders: list[Path]) -> dict[tuple[int, int], float]:
    scores = {}
    for folder in folders:
        config = json.loads((folder / "config.json").read_text())
        values = json.loads((folder / "absolute_metric.json").read_text())[METRIC]
        for index, value in enumerate(values):
            scores[(config["args"]["seed"], index)] = float(value)
    return scores


def bootstrap_ci(x: np.ndarray, resamples: int = 10_000) -> tuple[float, float]:
    means = np.random.default_rng(0).choice(x, (resamples, len(x))).mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def main(argv: list[str]) -> int:
    arms = {}
    for arg in argv:
        name, sep, folders = arg.partition("=")
        paths = [Path(f) for f in folders.split(",") if f]
        missing = [str(p) for p in paths if not (p / "absolute_metric.json").is_file()]
        if not sep or not paths or missing:
            print(f"error: {arg!r}: want name=folder[,folder...] of finished runs"
                  + (f"; not finished: {', '.join(missing)}" if missing else ""), file=sys.stderr)
            return 2
        arms[name] = arm_scores(paths)
    if not arms:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    base_name, base = next(iter(arms.items()))
    print(f"{'arm':16s} {'seeds':>5s} {'mean ± std':>16s}   paired difference to {base_name} [95% CI]")
    for name, scores in arms.items():
        x = np.array(list(scores.values()))
        line = f"{name:16s} {len(x):5d} {x.mean():8.2f} ± {x.std():5.2f}"
        common = sorted(set(scores) & set(base))
        if name != base_name and common:
            d = np.array([scores[s] - base[s] for s in common])
            lo, hi = bootstrap_ci(d)
            line += f"   {d.mean():+7.2f} [{lo:+.2f}, {hi:+.2f}] over {len(d)} seeds"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
