"""What the released code's checkpoint timing (docs/fidelity.md, V2) would change in finished runs.

    python benchmarks/eval_before_update.py runs/coordsum-3x10__*

rec_magpo.py evaluates the parameters from *before* each learn call: with n checkpoints it scores
the initial policy and the parameters after blocks 1 .. n-1, never the final ones; ours scores the
parameters after blocks 1 .. n. Both keep the best checkpoint (ties: the later) for the absolute
metric. So on the same run the two choices differ exactly when our best checkpoint is the last
one: then the released timing would have kept the best of the others (the initial policy is
assumed never to be the best: it scores a random policy). From each run folder's `metrics.jsonl`
this prints, per seed, our best and the released timing's best evaluation return (the
`--num-eval-episodes` mean of the checkpoint, not the 10x re-evaluation of the absolute metric), and
over all seeds of all runs given: how often they differ and the mean difference with a 95 %
bootstrap CI (seeds as the unit).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def best_later(returns: list[float]) -> int:
    """Index of the best checkpoint, ties to the later one (`keep_best`)."""
    best = 0
    for i, r in enumerate(returns):
        if r >= returns[best]:
            best = i
    return best


def seed_curves(run_dir: Path) -> dict[int, list[float]]:
    curves: dict[int, dict[int, float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "eval/episode_return" in row:
            curves.setdefault(row["seed_index"], {})[row["checkpoint"]] = row["eval/episode_return"]
    return {s: [c[k] for k in sorted(c)] for s, c in curves.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders (with metrics.jsonl)")
    parser.add_argument("--resamples", type=int, default=10_000)
    args = parser.parse_args(argv)
    diffs = []
    print(f"{'run':52s} {'seed':>4s} {'evals':>5s} {'ours':>9s} {'released':>9s} {'diff':>8s}")
    for run_dir in args.runs:
        if not (run_dir / "metrics.jsonl").is_file():
            print(f"error: {run_dir} has no metrics.jsonl", file=sys.stderr)
            return 2
        for seed, returns in sorted(seed_curves(run_dir).items()):
            ours = returns[best_later(returns)]
            released = returns[best_later(returns[:-1])] if len(returns) > 1 else float("nan")
            diffs.append(ours - released)
            print(f"{run_dir.name:52s} {seed:4d} {len(returns):5d} {ours:9.3f} {released:9.3f} {ours - released:8.3f}")
    d = np.asarray(diffs)
    boot = np.random.default_rng(0).choice(d, (args.resamples, len(d))).mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    print(f"\n{len(d)} seeds; the last checkpoint is the best in {(d > 0).sum()}; "
          f"ours - released: mean {d.mean():.3f} [95% CI {lo:.3f}, {hi:.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
