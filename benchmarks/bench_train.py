"""Training throughput of the algorithm scripts: env-steps/s (all seeds together) and compile time.

    python benchmarks/bench_train.py                                   # every script; 1 and 10 seeds
    python benchmarks/bench_train.py --scripts mappo --seeds 1 --ids coordsum-3x10 --updates 4
    python benchmarks/bench_train.py --scripts magpo_mat:ctce --set ppo_epochs=5 num_minibatches=1
    python benchmarks/bench_train.py --scripts mappo --seeds 10 --sequential   # one call vs 10 runs of 1 seed

A script may carry flags after a colon (`magpo_mat:ctce`, `magpo_sable:ctce,embed_dim=32`); `--set`
overrides flags of every script measured.

Each configuration is compiled once (ahead of time, timed separately), then trains `--updates`
updates of the paper's settings (128 envs x rollout 128 per seed, the script's defaults otherwise)
followed by one small evaluation, timed to the end of the call. SPS = seeds x updates x 128 x 128 /
seconds. Run it on the machine whose figures you report; docs/speed.md records them with the machine.

With `--sequential`, each N-seed measurement is compared with N runs of 1 seed one after another,
each compiled afresh as a separate command of the script would (seeds 0..N-1, the same keys as
the N-seed call): wall-clock time with and without compilation, and SPS, of both.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import envs  # noqa: E402


def parse_flags(items, defaults) -> dict:
    """['ctce', 'ppo_epochs=5'] -> {'ctce': True, 'ppo_epochs': 5}, cast to the type of each default."""
    flags = {}
    for item in items:
        name, _, value = item.partition("=")
        default = getattr(defaults, name)
        flags[name] = True if not value else type(default)(value) if default is not None else int(value)
    return flags


def measure(spec: str, env_id: str, num_seeds: int, updates: int, overrides: list[str], first_seed: int = 0,
            repeats: int = 1):
    """-> (SPS, compile s, run s) of `updates` updates; with `repeats` > 1 the compiled run is called
    that many times and the median is kept."""
    script_name, _, flags = spec.partition(":")
    script = importlib.import_module(script_name)
    defaults = script.Args()
    flags = parse_flags([f for f in flags.split(",") if f] + overrides, defaults)
    args = script.Args(**{"num_evals": 1, "num_eval_episodes": 4, **flags, "env_id": env_id, "num_seeds": num_seeds})
    args = dataclasses.replace(args, total_timesteps=updates * args.steps_per_update)
    env = envs.make(env_id)
    train = jax.jit(jax.vmap(script.make_train(args, env)))
    seeds = jnp.arange(first_seed, first_seed + num_seeds)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(seeds)
    t0 = time.perf_counter()
    compiled = train.lower(keys, seeds).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(keys, seeds))
        times.append(time.perf_counter() - t0)
    run_s = statistics.median(times)
    steps = num_seeds * args.num_updates * args.steps_per_update
    return steps / run_s, compile_s, run_s


def describe_cpu() -> str:
    """Model, clock, cache and widest vector unit (machines of one kind differ from day to day)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    info = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    flags = info.get("flags", "").split()
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    mhz = float(info.get("cpu MHz", 0))
    return f"{info.get('model name', '?')}, {mhz:.0f} MHz, cache {info.get('cache size', '?')}, {vector}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scripts", nargs="+",
                        default=["ippo", "mappo", "magpo_sable", "magpo_sable:ctce", "magpo_mat", "magpo_mat:ctce", "ctds"])
    parser.add_argument("--ids", nargs="+", default=["coordsum-3x10", "rware-tiny-4ag"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 10])
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=[], metavar="FLAG=VALUE", help="flags for every script")
    parser.add_argument("--sequential", action="store_true",
                        help="compare each N-seed call with N 1-seed runs one after another")
    opts = parser.parse_args()
    device = jax.devices()[0]
    print(f"machine: {describe_cpu()}, {os.cpu_count()} CPUs; jax {jax.__version__}; "
          f"device {device.platform}:{device.device_kind}")
    if opts.set:
        print(f"flags: {' '.join(opts.set)}")
    print(f"{'script':<18} {'env':<18} {'seeds':>5} {'SPS':>10} {'compile s':>10} {'run s':>8}")
    for name in opts.scripts:
        for env_id in opts.ids:
            for num_seeds in opts.seeds:
                sps, compile_s, run_s = measure(name, env_id, num_seeds, opts.updates, opts.set)
                print(f"{name:<18} {env_id:<18} {num_seeds:>5} {sps:>10,.0f} {compile_s:>10.1f} {run_s:>8.1f}",
                      flush=True)
                if opts.sequential and num_seeds > 1:
                    runs = [measure(name, env_id, 1, opts.updates, opts.set, first_seed=i) for i in range(num_seeds)]
                    seq_compile, seq_run = sum(r[1] for r in runs), sum(r[2] for r in runs)
                    seq_sps = sps * run_s / seq_run  # the same number of steps, in seq_run seconds
                    print(f"{'  ' + str(num_seeds) + ' x 1 seed':<18} {env_id:<18} {num_seeds:>5} {seq_sps:>10,.0f} "
                          f"{seq_compile:>10.1f} {seq_run:>8.1f}   one call: {compile_s + run_s:.1f} s with "
                          f"compilation, sequential: {seq_compile + seq_run:.1f} s", flush=True)


if __name__ == "__main__":
    main()
