"""Device memory of a whole training run: 10 seeds of each script in one compiled call, per task.

    python benchmarks/bench_memory.py                                    # every script, the default tasks
    python benchmarks/bench_memory.py --scripts mappo magpo_sable --ids rware-tiny-4ag --seeds 10
    python benchmarks/bench_memory.py --run                              # also run 1 update, read the peak

For each script and task this compiles `jax.jit(jax.vmap(train))` for `--seeds` seeds with the paper's
settings (128 envs x rollout 128, `--preset paper` where the script has the task's configuration,
else the script's defaults; 32 evaluation episodes per checkpoint and 320 for the absolute metric)
and prints XLA's buffer assignment of that program: the arguments, the outputs and the temporaries
live at its peak (`compiled.memory_analysis()`). That is the memory the run needs on the device
whatever its length (the number of updates and checkpoints only sets loop trip counts). With `--run`
it also trains one update and one evaluation and prints the allocator's peak where the backend
reports one (`device.memory_stats()['peak_bytes_in_use']`: GPUs do, the CPU does not).

The buffer assignment is the compiler's for the device it runs on: XLA:CPU and XLA:GPU fuse
differently, so a CPU figure estimates a GPU one, it does not equal it. Also JAX preallocates 75 %
of a GPU's memory by default (`XLA_PYTHON_CLIENT_PREALLOCATE=false` turns that off); what matters
for "does it fit" is the program's own need printed here.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import envs  # noqa: E402
import runs  # noqa: E402

# rware-tiny-4ag, then the largest task of each family (most agents, then the largest views)
DEFAULT_IDS = ["rware-tiny-4ag", "coordsum-8x15", "rware-large-8ag", "lbf-15x15-4p-5f", "connector-15x15x23a",
               "smax-27m_vs_30m", "mpe-simple_spread_10ag"]
GB = 1024**3


def configure(script, env_id: str, num_seeds: int):
    """The script's Args for the paper's settings on this task (its preset where it has one)."""
    args = script.Args(env_id=env_id, num_seeds=num_seeds, preset="paper")
    try:
        args = script.apply_preset(args, set())
        preset = "preset"
    except runs.ArgError:
        args = dataclasses.replace(args, preset=None)
        preset = "defaults"
    # One update and one checkpoint: the memory does not depend on the number of either.
    args = dataclasses.replace(args, num_evals=1, total_timesteps=args.steps_per_update)
    script.check_args(args)
    return args, preset


def measure(name: str, env_id: str, num_seeds: int, run: bool):
    script = importlib.import_module(name)
    args, preset = configure(script, env_id, num_seeds)
    env = envs.make(env_id)
    train = jax.jit(jax.vmap(script.make_train(args, env)))
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(jnp.arange(num_seeds))
    t0 = time.perf_counter()
    compiled = train.lower(keys, jnp.arange(num_seeds)).compile()
    compile_s = time.perf_counter() - t0
    m = compiled.memory_analysis()
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    peak = None
    if run:
        jax.block_until_ready(compiled(keys, jnp.arange(num_seeds)))
        stats = jax.devices()[0].memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
    return preset, m, total, peak, compile_s


def options(doc: str, ids: list[str], seeds: int, more: Callable = lambda parser: None) -> argparse.Namespace:
    """The command line of this benchmark and bench_state.py (--scripts, --ids, --seeds, and what `more`
    adds), the task ids checked; prints the machine line the tables start with."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--scripts", nargs="+", default=["ippo", "mappo", "magpo_sable", "magpo_mat", "ctds"])
    parser.add_argument("--ids", nargs="+", default=ids)
    parser.add_argument("--seeds", type=int, default=seeds)
    more(parser)
    opts = parser.parse_args()
    unknown = [i for i in opts.ids if i not in envs.ENV_IDS]
    if unknown:
        parser.error(f"unknown env ids: {', '.join(unknown)}")
    device = jax.devices()[0]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; jax {jax.__version__}; "
          f"device {device.platform}:{device.device_kind}; {opts.seeds} seeds, 128 envs x 128 steps each")
    return opts


def main():
    opts = options(__doc__, DEFAULT_IDS, 10, lambda parser: parser.add_argument(
        "--run", action="store_true", help="also train one update and read the allocator's peak"))
    print(f"{'script':<12} {'env':<24} {'config':<8} {'args GB':>8} {'out GB':>7} {'temp GB':>8} {'total GB':>9} "
          f"{'peak GB':>8} {'compile s':>9}")
    for name in opts.scripts:
        for env_id in opts.ids:
            preset, m, total, peak, compile_s = measure(name, env_id, opts.seeds, opts.run)
            peak_s = f"{peak / GB:8.2f}" if peak is not None else f"{'-':>8}"
            print(f"{name:<12} {env_id:<24} {preset:<8} {m.argument_size_in_bytes / GB:8.3f} "
                  f"{m.output_size_in_bytes / GB:7.3f} {m.temp_size_in_bytes / GB:8.2f} {total / GB:9.2f} "
                  f"{peak_s} {compile_s:9.1f}", flush=True)


if __name__ == "__main__":
    main()
