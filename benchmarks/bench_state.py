"""What --resume costs: the size of the run state written at every checkpoint, and its share of the run's time.

    python benchmarks/bench_state.py                                   # every script on rware-tiny-4ag
    python benchmarks/bench_state.py --scripts mappo magpo_sable --ids smax-27m_vs_30m --seeds 2

For each script and task, with the paper's settings as bench_memory.py configures them (128 envs x
128 steps, `--preset paper` where the script has the task's configuration, else its defaults):

- `state MB/seed`: the RunnerState that `state.msgpack` stores for one seed (parameters, optimiser
  states, environment states, recurrent states, keys, the best policy so far), from jax.eval_shape of
  the script's `init` (nothing trained);
- `write s`: the time `runs.Reporter.write_state` takes for `--seeds` seeds (serialise, write, rename;
  the median of 5);
- `update s`: one training update of `--seeds` seeds on this machine (the compiled program's second
  call, compilation excluded, the update and one evaluation);
- `share`: write / (write + the updates between two checkpoints x update s) at the paper's budget
  (20M steps per seed, 122 checkpoints: 10 updates of 16,384 steps between two), the time the state
  adds to a run. `--no-save-state` turns it off.

The callback that hands each seed's state to the host is not in `write s`: on the CPU it is a copy in
memory; on a GPU it is a transfer of `state MB/seed` per seed at every checkpoint.
"""

from __future__ import annotations

import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import envs  # noqa: E402
import runs  # noqa: E402
from bench_memory import configure, options  # noqa: E402  (this folder is on the path)

PAPER_STEPS, PAPER_EVALS = 20_000_000, 122
MB = 1024**2


def measure(name: str, env_id: str, num_seeds: int):
    script = importlib.import_module(name)
    args, preset = configure(script, env_id, num_seeds)
    env = envs.make(env_id)
    train = script.make_train(args, env)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(jnp.arange(num_seeds))
    shapes = jax.eval_shape(train.init, keys[0])
    leaves = jax.tree_util.tree_leaves(shapes)
    state_bytes = sum(np.dtype(x.dtype).itemsize * int(np.prod(x.shape)) for x in leaves)
    runners = [jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), shapes) for _ in range(num_seeds)]
    with tempfile.TemporaryDirectory() as folder:
        reporter = runs.Reporter(args, env, Path(folder), system=name)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            reporter.write_state(0, runners)
            times.append(time.perf_counter() - t0)
    write_s = statistics.median(times)
    compiled = jax.jit(jax.vmap(train)).lower(keys, jnp.arange(num_seeds)).compile()
    jax.block_until_ready(compiled(keys, jnp.arange(num_seeds)))
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(keys, jnp.arange(num_seeds)))
    update_s = time.perf_counter() - t0
    updates_between = PAPER_STEPS // (PAPER_EVALS * args.steps_per_update)
    share = write_s / (write_s + updates_between * update_s)
    return preset, state_bytes, write_s, update_s, share


def main():
    opts = options(__doc__, ["rware-tiny-4ag"], 2)
    print(f"{'script':<12} {'env':<24} {'config':<8} {'state MB/seed':>13} {'write s':>8} {'update s':>9} {'share':>7}")
    for name in opts.scripts:
        for env_id in opts.ids:
            preset, state_bytes, write_s, update_s, share = measure(name, env_id, opts.seeds)
            print(f"{name:<12} {env_id:<24} {preset:<8} {state_bytes / MB:13.2f} {write_s:8.3f} {update_s:9.2f} "
                  f"{100 * share:6.2f}%", flush=True)


if __name__ == "__main__":
    main()
