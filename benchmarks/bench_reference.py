"""Our scripts against the paper's codebase (liyheng/MAGPO, on Mava), timed on the same machine, in turns.

Machines of one kind differ by up to ~40 % from day to day, so a figure measured elsewhere says little;
this runs both codebases here, one after the other, on the same settings (1 seed, 128 envs x rollout
128, the paper's network sizes; 4 epochs x 2 minibatches for MAPPO and IPPO, the reference's 5 x 1
for MAT, which ours runs as `magpo_mat.py --ctce`):

    bash benchmarks/reference/setup.sh                  # once: the paper's codebase in .reference/
    python benchmarks/bench_reference.py                # mappo and ippo on coordsum-3x10-30, rware-tiny-4ag
    python benchmarks/bench_reference.py --algos mappo --ids coordsum-3x10-30 --rounds 3
    python benchmarks/bench_reference.py --algos mat

The reference runs in a subprocess with Mava's own defaults for 128 envs (`arch.num_envs=128`, one
update batch), its `num_updates` split into `--windows` evaluation windows; Mava prints the
env-steps/s of each window's `learn` call. Its first window includes the compilation (pmap compiles
on the first call), so the reference's figure is the median of the others. Ours is
`bench_train.measure`: the run of as many updates as one window holds, compiled once and called as
many times as the reference's windows kept, the median; its time includes an evaluation of 1
episode and the absolute metric's 10, so it is if anything a little pessimistic.

Mava names its CoordSum default `3x10-30` (targets 0..29), which is our `coordsum-3x10-30`.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402

from bench_train import describe_cpu, measure  # noqa: E402

# our env id -> the reference's hydra overrides for the same task
REFERENCE_TASKS = {
    "coordsum-3x10-30": ["env=coordsum", "env/scenario=3x10-30"],
    "coordsum-3x30-50": ["env=coordsum", "env/scenario=3x30-50"],
    "rware-tiny-4ag": ["env=rware", "env/scenario=tiny-4ag"],
    "rware-tiny-2ag": ["env=rware", "env/scenario=tiny-2ag"],
    "rware-small-4ag": ["env=rware", "env/scenario=small-4ag"],
}
# algo -> (the reference's script, its update settings; our script, the same settings in our flags)
ALGOS = {
    "mappo": ("mava/systems/ppo/anakin/rec_mappo.py", ["system.ppo_epochs=4", "system.num_minibatches=2"],
              "mappo", []),
    "ippo": ("mava/systems/ppo/anakin/rec_ippo.py", ["system.ppo_epochs=4", "system.num_minibatches=2"],
             "ippo", []),
    # the reference's MAT settings (mava/configs/system/mat/mat.yaml): 5 epochs x 1 minibatch
    "mat": ("mava/systems/mat/anakin/mat.py", ["system.ppo_epochs=5", "system.num_minibatches=1"],
            "magpo_mat:ctce", ["ppo_epochs=5", "num_minibatches=1"]),
}
SPS_LINE = re.compile(r"ACTOR - Steps per second: ([0-9.]+)")


def measure_reference(reference: Path, algo: str, env_id: str, updates_per_window: int, windows: int) -> float:
    """Median env-steps/s of the reference's evaluation windows after the first."""
    env = dict(os.environ, PYTHONPATH=f"{reference / 'stubs'}:{reference / 'MAGPO'}", JAX_PLATFORMS="cpu")
    script, settings, _, _ = ALGOS[algo]
    command = [str(reference / "venv" / "bin" / "python"), script, *REFERENCE_TASKS[env_id],
               "arch.num_envs=128", "system.update_batch_size=1", "system.rollout_length=128", *settings,
               f"system.num_updates={updates_per_window * windows}",
               f"arch.num_evaluation={windows}", "arch.num_eval_episodes=4", "arch.absolute_metric=False",
               "logger.checkpointing.save_model=False", f"hydra.run.dir={reference / 'outputs'}"]
    done = subprocess.run(command, cwd=reference / "MAGPO", env=env, capture_output=True, text=True)
    sps = [float(x) for x in SPS_LINE.findall(done.stdout + done.stderr)]
    if done.returncode != 0 or len(sps) < 2:
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        raise SystemExit(f"bench_reference.py: the reference failed on {algo} {env_id}: " + " | ".join(tail))
    return statistics.median(sps[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, default=Path(".reference"),
                        help="the folder benchmarks/reference/setup.sh built")
    parser.add_argument("--algos", nargs="+", default=["mappo", "ippo"], choices=sorted(ALGOS))
    parser.add_argument("--ids", nargs="+", default=["coordsum-3x10-30", "rware-tiny-4ag"], choices=sorted(REFERENCE_TASKS))
    parser.add_argument("--rounds", type=int, default=2, help="turns of (ours, reference) per algorithm and task")
    parser.add_argument("--updates", type=int, default=6, help="updates per timed window")
    parser.add_argument("--windows", type=int, default=4, help="the reference's evaluation windows (the first is dropped)")
    opts = parser.parse_args()
    reference = opts.reference.resolve()
    if not (reference / "venv" / "bin" / "python").exists() or not (reference / "MAGPO").is_dir():
        parser.error(f"no paper codebase in {reference}: run `bash benchmarks/reference/setup.sh {opts.reference}` first")
    print(f"machine: {describe_cpu()}, {os.cpu_count()} CPUs; ours: jax {jax.__version__}", flush=True)
    print(f"{'algo':<7}{'env':<19}{'round':>6}{'ours SPS':>11}{'reference SPS':>15}{'ours / ref':>12}", flush=True)
    for algo in opts.algos:
        _, _, spec, flags = ALGOS[algo]
        for env_id in opts.ids:
            ratios = []
            for r in range(opts.rounds):
                ours, _, _ = measure(spec, env_id, 1, opts.updates, flags + ["num_eval_episodes=1"],
                                     repeats=opts.windows - 1)
                ref = measure_reference(reference, algo, env_id, opts.updates, opts.windows)
                ratios.append(ours / ref)
                print(f"{algo:<7}{env_id:<19}{r + 1:>6}{ours:>11,.0f}{ref:>15,.0f}{ours / ref:>12.2f}", flush=True)
            print(f"{algo:<7}{env_id:<19}{'mean':>6}{'':>11}{'':>15}{statistics.mean(ratios):>12.2f}", flush=True)


if __name__ == "__main__":
    main()
