"""N candidate settings trained in one compiled call (benchmarks/tune.py's way) against the same N
trained one after another (a run each, compiled each: what N separate commands do), wall clock with
compilation and the training steps per second, on this machine's default device.

    python benchmarks/bench_tune.py --method magpo --counts 1 2 4 8 \\
        --extra "--env-id coordsum-3x10 --num-envs 64 --total-timesteps 131072 --num-evals 2"

One seed per candidate; the candidates differ in δ and λ (MAGPO) or the learning rate (the others).
A table row per N: the one call's compile and run seconds, its SPS (every lane's steps), the
sequential runs' total seconds and SPS, and the ratio of the two wall clocks.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import envs  # noqa: E402
import runs  # noqa: E402
from reproduce import METHODS  # noqa: E402


def settings(method: str, count: int) -> list[dict]:
    if method in ("magpo", "magpo_mat"):
        grid = [(d, l) for l in (1.0, 2.0, 4.0, 8.0, 0.0) for d in (1.3, 1.5, 2.0, 1.2, 3.0, 1.1)]
        return [{"delta": d, "lam": l} for d, l in grid[:count]]
    return [{"lr": 2.5e-4 * (1.0 + 0.1 * i)} for i in range(count)]


def one_call(module, args, env, candidates):
    names = runs.per_candidate_flags(args)
    train = runs.candidates_train(module.make_train, args, env, None, names)
    values = jnp.asarray([[float(c.get(n, getattr(args, n))) for n in names] for c in candidates], jnp.float32)
    keys = jnp.tile(jax.random.fold_in(jax.random.PRNGKey(0), 0)[None], (len(candidates), 1))

    call = lambda keys, values: runs.train_candidates(train, keys, values, jnp.arange(len(candidates)))
    t0 = time.time()
    compiled = jax.jit(call).lower(keys, values).compile()
    t1 = time.time()
    jax.block_until_ready(compiled(keys, values))
    return t1 - t0, time.time() - t1


def one_after_another(module, args, env, candidates):
    compile_s = run_s = 0.0
    key = jax.random.fold_in(jax.random.PRNGKey(0), 0)
    for c in candidates:
        train = module.make_train(dataclasses.replace(args, **c), env, None)
        t0 = time.time()
        compiled = jax.jit(lambda k: train(k, 0)).lower(key).compile()
        t1 = time.time()
        jax.block_until_ready(compiled(key))
        compile_s, run_s = compile_s + t1 - t0, run_s + time.time() - t1
    return compile_s, run_s


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=list(METHODS), default="magpo")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--extra", default="--env-id coordsum-3x10 --num-envs 64 --total-timesteps 131072 --num-evals 2")
    opts = parser.parse_args(argv)
    script, flags = METHODS[opts.method]
    module = importlib.import_module(script)
    args = module.parse_args([*flags, *shlex.split(opts.extra), "--num-seeds", "1", "--no-save-state"])
    env = envs.make(args.env_id)
    steps = args.num_updates * args.steps_per_update
    print(f"{opts.method} on {args.env_id}, {steps:,} steps per candidate, {jax.default_backend()} "
          f"({jax.devices()[0].device_kind})", flush=True)
    print("| N | one call: compile s | run s | SPS | one after another: compile s | run s | SPS | wall ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for count in opts.counts:
        candidates = settings(opts.method, count)
        c1, r1 = one_call(module, args, env, candidates)
        c2, r2 = one_after_another(module, args, env, candidates)
        print(f"| {count} | {c1:.1f} | {r1:.1f} | {count * steps / r1:,.0f} | {c2:.1f} | {r2:.1f} | "
              f"{count * steps / r2:,.0f} | {(c2 + r2) / (c1 + r1):.2f} |", flush=True)


if __name__ == "__main__":
    main()
