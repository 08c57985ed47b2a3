"""Learning side by side with the released code: one task and method, K seeds on each codebase, one figure.

    bash benchmarks/reference/setup.sh                   # once: the released code in .reference/
    python benchmarks/compare_reference.py --check-patch  # the decay-mask patch against the released loop
    python benchmarks/compare_reference.py --tasks coordsum-3x10 --methods mappo magpo --num-seeds 10
    python benchmarks/compare_reference.py --tasks coordsum-3x10 --methods mappo --num-seeds 2 \\
        --total-timesteps 16384 --num-evals 2 --num-envs 16 --rollout-length 64 --out-dir /tmp/refcheck \\
        --figures /tmp/refcheck/figures --page /tmp/refcheck/reference_check.md   # a smoke test
    python benchmarks/compare_reference.py --plot-only    # redraw every figure and the table from the stored runs
    python benchmarks/compare_reference.py --ages benchmarks/results/reference_check/<run>  # one run, age by age

The released code (liyheng/MAGPO d2ac38b, on Mava) runs in the venv that setup.sh built, one seed per
process as it runs (`system.seed=0..K-1`); ours runs in one process of our script with `--seed 0
--num-seeds K`, which trains the K seeds batched (seed i from fold_in(PRNGKey(0), i)). No random
stream is shared between the codebases, so the seeds are independent draws on each side and every
comparison is unpaired. Both sides get the same configuration, written out in full on both command
lines (neither side's defaults are relied on): `METHODS` holds each method's values (the released
code's `mava/configs/system/*` and `network/*` defaults, which are ours too), every flag below
overrides one. `--num-envs` is the environments of one update; the released side gets
`arch.num_envs = num_envs / update_batch_size` and `system.update_batch_size`. With
`--update-batch-size` 2 (the paper's 64 x 2), ours splits its environments into the same groups
(`--update-batch-size` of magpo_sable.py and magpo_mat.py); mappo.py has no such flag and trains one
batch of all of them (docs/fidelity.md L9), which the run's header says.

Run folders, `<out-dir>/<task>__<method>__<steps per seed>x<seeds>[__<tag>]/`:
- `harness.json`: the configuration, both sides' command lines (a folder holding another configuration
  is refused: pick another --out-dir or --tag);
- `released_config.yaml`: the config that Hydra composed from the released side's overrides;
- `released/seed_<s>/console.log` and `evals.json` (parsed: the evaluator's return at every checkpoint,
  the absolute metric, the actor's env-steps/s per evaluation window, the wall time);
- `ours/`: our script's run folder (config.json, metrics.jsonl, absolute_metric.json, ...), `ours.log`
  and `ours.json` (the command, the wall time).
A side is done when its parsed results are present (`evals.json`; `ours/absolute_metric.json` and
`ours.json`): done sides are skipped, a killed one is deleted and re-run, so a long list can be run
over several sittings.

What is compared. The released code evaluates, at the checkpoint it logs at step t, the parameters
from *before* that block of updates (docs/fidelity.md V2): its checkpoints score the parameters after
0, 1, ..., K-1 blocks, ours after 1, 2, ..., K. The figures draw each checkpoint at the age of the
parameters it scored; the area under the curve (AUC) of both sides is the mean evaluation return over
the K-1 checkpoints both sides scored at the same age (after 1..K-1 blocks). The absolute metric is
each side's best checkpoint re-evaluated on 10 x --num-eval-episodes episodes (the released code's
best among its ages 0..K-1, ours among 1..K). The score is the episode return on every task (the
number both codebases log). Figures: the mean over seeds with its 95% bootstrap CI (rliable, seeds as
the unit, as benchmarks/plot.py draws them). Table: mean ± std over seeds (numpy's std) and the 95%
bootstrap CI (10,000 resamples, each side's seeds resampled on their own) of ours − released.

Bad input (an unknown task or method, no reference venv or a part of it the task needs) is
one line `error: ...` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

# our env id -> the released code's hydra overrides for the same task (mava/configs/env/)
TASKS: dict[str, list[str]] = {
    # The released code registers only 3x10-30 (targets 0..29); its env takes `maxval` (targets are
    # drawn from 0..maxval-1, mava/coordsum/env.py) and make_coordsum passes env.kwargs on to it, so
    # maxval=10 gives the paper's task, targets 0..9, exactly our coordsum-3x10.
    "coordsum-3x10": ["env=coordsum", "env/scenario=3x10-30", "++env.kwargs.maxval=10"],
    "coordsum-3x10-30": ["env=coordsum", "env/scenario=3x10-30"],
    "lbf-8x8-2p-2f-coop": ["env=lbf", "env/scenario=8x8-2p-2f-coop"],
    "mpe-simple_spread_3ag": ["env=mpe", "env/scenario=simple_spread_3ag"],
    "rware-tiny-2ag": ["env=rware", "env/scenario=tiny-2ag"],
    # The released code's vector view (env=vector-connector, docs/fidelity.md E19) of jumanji's Connector-v2,
    # which only jumanji <= 1.1.1 registers: these runs put setup.sh's jumanji 1.1.1 first on PYTHONPATH.
    "connector-5x5x3a": ["env=vector-connector", "env/scenario=con-5x5x3a"],
}
EXTRA_PATHS = {"connector-5x5x3a": "jumanji-1.1.1"}  # task -> a folder of the reference put first on PYTHONPATH


@dataclasses.dataclass(frozen=True)
class Method:
    released_script: str  # in the released repository
    ours: str  # our script (module name)
    ours_flags: tuple[str, ...]  # fixed flags of ours that select the method
    defaults: dict  # the configuration of this method: key -> value (None: not a setting of the method)


_PPO = dict(num_envs=128, update_batch_size=1, rollout_length=128, ppo_epochs=4, num_minibatches=2, lr=2.5e-4,
            clip_eps=0.2, ent_coef=0.01, vf_coef=0.5, gamma=0.99, gae_lambda=0.95, max_grad_norm=0.5)
_SABLE = dict(embed_dim=64, n_head=1, n_block=1, decay_scaling_factor=0.8)
METHODS: dict[str, Method] = {
    # mava/configs/system/ppo/rec_mappo.yaml, network/rnn.yaml
    "mappo": Method("mava/systems/ppo/anakin/rec_mappo.py", "mappo", (), {**_PPO, "hidden_dim": 128}),
    # system/gpo/rec_magpo.yaml (clip_gpo = delta, alpha = lam), network/magpo.yaml
    "magpo": Method("mava/systems/gpo/anakin/rec_magpo.py", "magpo_sable", (),
                    {**_PPO, **_SABLE, "hidden_dim": 128, "delta": 1.5, "lam": 1.0}),
    # system/sable/rec_sable.yaml, network/rec_retention.yaml
    "sable": Method("mava/systems/sable/anakin/rec_sable.py", "magpo_sable", ("--ctce",), {**_PPO, **_SABLE}),
    # system/mat/mat.yaml, network/transformer.yaml
    "mat": Method("mava/systems/mat/anakin/mat.py", "magpo_mat", ("--ctce",),
                  {**_PPO, "ppo_epochs": 5, "num_minibatches": 1, "lr": 5e-4, "clip_eps": 0.1, "max_grad_norm": 5.0,
                   "embed_dim": 64, "n_head": 1, "n_block": 1}),
}
# the settings every method has, beside its own: the budget and the evaluation
COMMON = dict(total_timesteps=20_000_000, num_evals=122, num_eval_episodes=32, num_seeds=10)
FLAG_TYPES = dict(num_envs=int, update_batch_size=int, rollout_length=int, ppo_epochs=int, num_minibatches=int,
                  lr=float, clip_eps=float, ent_coef=float, vf_coef=float, gamma=float, gae_lambda=float,
                  max_grad_norm=float, hidden_dim=int, embed_dim=int, n_head=int, n_block=int,
                  decay_scaling_factor=float, delta=float, lam=float, total_timesteps=int, num_evals=int,
                  num_eval_episodes=int, num_seeds=int)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
MARK_BEGIN, MARK_END = "<!-- reference-check table: begin -->", "<!-- reference-check table: end -->"
LABELS = {"mappo": "MAPPO", "magpo": "MAGPO", "sable": "Sable", "mat": "MAT"}


class InputError(ValueError):
    """Bad input: one line `error: ...` on stderr, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage lines reduced to one line, exit code 2
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


# --------------------------------------------------------------------------------------------------
# The configuration, and both sides' command lines
# --------------------------------------------------------------------------------------------------
def resolve_config(method: str, given: dict) -> dict:
    """The method's values under every flag given; the budget made exact for both sides."""
    config = {**METHODS[method].defaults, **COMMON}
    config.update({key: value for key, value in given.items() if value is not None and key in config})
    E, U, T = config["num_envs"], config["update_batch_size"], config["rollout_length"]
    for key in ("num_envs", "update_batch_size", "rollout_length", "ppo_epochs", "num_minibatches", "num_evals",
                "num_eval_episodes", "num_seeds", "total_timesteps"):
        if config[key] <= 0:
            raise InputError(f"--{key.replace('_', '-')} must be positive, got {config[key]}")
    if E % U:
        raise InputError(f"--update-batch-size {U} must divide --num-envs {E}")
    # each update batch of the released code splits its own environments (MAT: its steps) into minibatches
    samples = E // U * (T if method == "mat" else 1)
    if samples % config["num_minibatches"]:
        raise InputError(f"--num-minibatches {config['num_minibatches']} must divide the {samples} "
                         f"{'steps' if method == 'mat' else 'environments'} of each update batch")
    per_eval = config["total_timesteps"] // (E * T) // config["num_evals"]
    if per_eval < 2:  # the released code asserts num_updates > num_evaluation
        raise InputError(f"--total-timesteps {config['total_timesteps']} gives {per_eval} updates per evaluation; the "
                         f"released code needs at least 2: at least {2 * config['num_evals'] * E * T} steps")
    config["total_timesteps"] = per_eval * config["num_evals"] * E * T  # both sides then train exactly this
    config["updates_per_eval"] = per_eval
    return config


def released_overrides(task: str, method: str, c: dict, seed: int, seed_dir: Path) -> list[str]:
    """Hydra overrides that set every value of `c` on the released side."""
    T = c["rollout_length"]
    out = [*TASKS[task],
           f"arch.num_envs={c['num_envs'] // c['update_batch_size']}", f"system.update_batch_size={c['update_batch_size']}",
           f"system.rollout_length={T}", f"system.ppo_epochs={c['ppo_epochs']}",
           f"system.num_minibatches={c['num_minibatches']}", f"system.actor_lr={c['lr']}",
           f"system.clip_eps={c['clip_eps']}", f"system.ent_coef={c['ent_coef']}", f"system.vf_coef={c['vf_coef']}",
           f"system.gamma={c['gamma']}", f"system.gae_lambda={c['gae_lambda']}",
           f"system.max_grad_norm={c['max_grad_norm']}", "system.decay_learning_rates=False",
           "system.add_agent_id=True", f"system.total_timesteps={c['total_timesteps']}",
           f"system.num_updates={c['updates_per_eval'] * c['num_evals']}", f"system.seed={seed}",
           f"arch.num_evaluation={c['num_evals']}", f"arch.num_eval_episodes={c['num_eval_episodes']}",
           f"arch.num_absolute_metric_eval_episodes={10 * c['num_eval_episodes']}", "arch.evaluation_greedy=False",
           "arch.absolute_metric=True"]
    H = c.get("hidden_dim")
    if method == "mappo":
        out += [f"system.critic_lr={c['lr']}", f"system.recurrent_chunk_size={T}", f"network.hidden_state_dim={H}"]
        out += [f"network.{net}.{part}.layer_sizes=[{H}]" for net in ("actor_network", "critic_network")
                for part in ("pre_torso", "post_torso")]
    if method in ("magpo", "sable"):
        out += [f"network.net_config.{k}={c[k]}" for k in ("embed_dim", "n_head", "n_block")]
        out += [f"network.memory_config.decay_scaling_factor={c['decay_scaling_factor']}",
                "network.memory_config.timestep_positional_encoding=True", "network.memory_config.timestep_chunk_size=null"]
    if method == "magpo":
        out += [f"system.clip_gpo={c['delta']}", f"system.alpha={c['lam']}", f"network.hidden_state_dim={H}"]
        out += [f"network.actor_network.{part}.layer_sizes=[{H}]" for part in ("pre_torso", "post_torso")]
    if method == "mat":
        out += [f"network.{k}={c[k]}" for k in ("embed_dim", "n_head", "n_block")]
        out += ["network.use_rmsnorm=False", "network.use_swiglu=False"]
    out += ["logger.checkpointing.save_model=False", f"logger.base_exp_path={seed_dir / 'results'}",
            f"hydra.run.dir={seed_dir / 'hydra'}"]
    return out


def ours_argv(task: str, method: str, c: dict, run_dir: Path) -> list[str]:
    """Our script's flags that set every value of `c` (the script's name not included)."""
    keys = ["num_envs", "rollout_length", "ppo_epochs", "num_minibatches", "lr", "clip_eps", "ent_coef", "vf_coef",
            "gamma", "gae_lambda", "max_grad_norm", "total_timesteps", "num_evals", "num_eval_episodes", "num_seeds"]
    keys += [k for k in ("hidden_dim", "embed_dim", "n_head", "n_block", "decay_scaling_factor", "delta", "lam")
             if c.get(k) is not None]
    out = ["--env-id", task, *METHODS[method].ours_flags, "--seed", "0"]
    for k in keys:
        out += [f"--{k.replace('_', '-')}", str(c[k])]
    out += ["--no-greedy-eval"]
    if method == "mappo":
        out += ["--recurrent-chunk-size", str(c["rollout_length"])]
    else:  # the released code's update epochs (docs/fidelity.md L7, L8) and its update batches (L9)
        out += ["--shuffle-agents", "--update-batch-size", str(c["update_batch_size"])]
        if method != "mat":
            out += ["--stale-epoch-memory"]
    out += ["--out-dir", str(run_dir), "--run-name", "ours"]
    return out


def ours_args(method: str, argv: list[str]) -> dict:
    """Our script's Args for argv, parsed and checked by the script itself (its errors are InputErrors)."""
    module = importlib.import_module(METHODS[method].ours)
    try:
        args = module.parse_args(argv)
        module.check_args(args)
    except ValueError as error:  # runs.ArgError
        raise InputError(f"{METHODS[method].ours}.py refuses the configuration: {error}") from None
    return dataclasses.asdict(args)


def fmt_steps(steps: int) -> str:
    return f"{steps / 1e6:.3g}M" if steps >= 10**6 else f"{steps / 1e3:.3g}k" if steps >= 10**3 else str(steps)


def run_name(task: str, method: str, c: dict, tag: str | None) -> str:
    return f"{task}__{method}__{fmt_steps(c['total_timesteps'])}x{c['num_seeds']}" + (f"__{tag}" if tag else "")


# --------------------------------------------------------------------------------------------------
# The reference venv: environment, the patch check, the composed config
# --------------------------------------------------------------------------------------------------
def reference_env(reference: Path, task: str | None = None) -> dict:
    paths = [reference / EXTRA_PATHS[task]] if task in EXTRA_PATHS else []
    return dict(os.environ, PYTHONPATH=":".join(map(str, [*paths, reference / "stubs", reference / "MAGPO"])),
                JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))


def check_reference(reference: Path, task: str | None = None) -> None:
    needed = [reference / "venv" / "bin" / "python", reference / "MAGPO" / "mava"]
    needed += [reference / EXTRA_PATHS[task]] if task in EXTRA_PATHS else []
    missing = [p for p in needed if not p.exists()]
    if missing:
        raise InputError(f"no reference venv in {reference} ({missing[0]} is missing): run "
                         f"`bash benchmarks/reference/setup.sh` first (MAGPO_SRC=<a clone> to clone from a local copy)")


CHECK_PATCH = r'''
import sys
import numpy as np
import jax
from mava.networks import retention

cls = retention.SimpleRetention
if not hasattr(cls, "_get_decay_matrix_mask_timestep_loop"):
    sys.exit("not patched: mava/networks/retention.py has no _get_decay_matrix_mask_timestep_loop; "
             "run benchmarks/reference/setup.sh")


class Loop(cls):  # the released method in place of the patched one, for the whole decay matrix
    _get_decay_matrix_mask_timestep = cls._get_decay_matrix_mask_timestep_loop


N = 3
kw = dict(embed_dim=8, head_size=8, n_agents=N, masked=True, decay_kappa=0.9, memory_config=None)
patched, released = cls(**kw), Loop(**kw)
fast = jax.jit(patched._get_decay_matrix_mask_timestep)
rng = np.random.default_rng(0)
cases = mismatches = 0
for T in (1, 2, 3, 8, 33, 128):
    # Every case of this T, stacked along the batch (rows are independent in both methods): the released
    # loop is compiled once per T (eagerly, each of its slices would be compiled on its own).
    batch = []
    for B in (1, 2, 5, 16):
        for p in (0.0, 0.05, 0.3, 1.0):
            for edge in ("none", "first", "last", "both"):
                dones = rng.random((B, T)) < p
                dones[:, 0] |= edge in ("first", "both")
                dones[:, -1] |= edge in ("last", "both")
                batch.append((B, p, edge, dones))
    stacked = np.concatenate([d for *_, d in batch])
    want_all = np.asarray(jax.jit(patched._get_decay_matrix_mask_timestep_loop)(stacked))
    per_agent = np.repeat(stacked, N, axis=1)  # the whole decay matrix (each step's done repeated per agent)
    whole = np.array_equal(np.asarray(jax.jit(patched.get_decay_matrix)(per_agent)),
                           np.asarray(jax.jit(released.get_decay_matrix)(per_agent)))
    row = 0
    for B, p, edge, dones in batch:
        want = want_all[row:row + B]
        row += B
        got = [np.asarray(fast(dones)), np.asarray(patched._get_decay_matrix_mask_timestep(dones))]
        cases += 1
        if not (whole and all(g.dtype == want.dtype and g.shape == want.shape and np.array_equal(g, want) for g in got)):
            mismatches += 1
            if mismatches <= 5:
                shown = ["".join(map(str, r)) for r in dones.astype(int).tolist()[:2]]
                print(f"MISMATCH: batch {B}, T {T}, done rate {p}, dones forced at {edge}; first rows {shown}")
print(f"{cases} cases (batch 1..16, T 1..128, done rates 0..1, dones at the first and last step; the mask and the "
      f"whole decay matrix): {cases - mismatches} equal, {mismatches} differ")
sys.exit(1 if mismatches else 0)
'''


def check_patch(reference: Path) -> None:
    """The patched `_get_decay_matrix_mask_timestep` against the released loop, in the reference venv."""
    check_reference(reference)
    print("decay-mask patch check (reference venv): ", end="", flush=True)
    done = subprocess.run([str(reference / "venv" / "bin" / "python"), "-c", CHECK_PATCH], cwd=reference / "MAGPO",
                          env=reference_env(reference), capture_output=True, text=True)
    lines = [l for l in (done.stdout + done.stderr).splitlines() if l.strip()]
    if done.returncode != 0:
        print("FAILED")
        print("\n".join(lines[-20:]), file=sys.stderr)
        raise InputError("the patched decay mask of the reference differs from the released loop (or the check "
                         "could not run): refusing to run the reference")
    print(lines[-1])


def composed_config(reference: Path, script: str, overrides: list[str], task: str | None = None) -> str:
    """The config Hydra composes for the released script from the overrides (`--cfg job --resolve`)."""
    done = subprocess.run([str(reference / "venv" / "bin" / "python"), script, *overrides, "--cfg", "job", "--resolve"],
                          cwd=reference / "MAGPO", env=reference_env(reference, task), capture_output=True, text=True)
    if done.returncode != 0:
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
        raise InputError(f"the released code refuses the overrides: {tail}")
    lines = done.stdout.splitlines()  # the config, after what the imports printed
    first = next((i for i, l in enumerate(lines) if re.match(r"^[a-z_]+:", l)), 0)
    return "\n".join(lines[first:]) + "\n"


# --------------------------------------------------------------------------------------------------
# Running both sides
# --------------------------------------------------------------------------------------------------
def stream(command: list[str], cwd: Path, env: dict, log: Path, show) -> int:
    """Run `command`, its output into `log`; the lines `show(line)` returns text for are printed."""
    with open(log, "w") as f:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1)
        for line in process.stdout:
            f.write(line)
            text = show(ANSI.sub("", line).rstrip())
            if text:
                print(text, flush=True)
        return process.wait()


def parse_console(text: str, block: int) -> dict:
    """The released console: `MISC - Timestep: t`, then the actor's and the evaluator's lines of that
    checkpoint (mava/utils/logger.py ConsoleLogger), and the absolute metric's line at the end."""
    text = ANSI.sub("", text)
    field = lambda line, name: float(re.search(rf"{name}: (-?[0-9.]+(?:e[-+]?[0-9]+)?|-?inf|nan)", line).group(1))
    steps, returns, stds, sps, absolute = [], [], [], [], None
    for line in text.splitlines():
        if line.startswith("MISC - Timestep:"):
            steps.append(int(field(line, "Timestep")))
        elif line.startswith("ACTOR - "):
            sps.append(field(line, "Steps per second"))
        elif line.startswith("EVALUATOR - "):
            returns.append(field(line, "Episode return mean"))
            stds.append(field(line, "Episode return std"))
        elif line.startswith("ABSOLUTE - "):
            absolute = (field(line, "Episode return mean"), field(line, "Episode return std"))
    if not steps or len(steps) != len(returns) or absolute is None:
        raise ValueError(f"unparsable console: {len(steps)} timesteps, {len(returns)} evaluations, "
                         f"absolute metric {'found' if absolute else 'missing'}")
    return {"steps": steps, "params_steps": [s - block for s in steps], "episode_return": returns,
            "episode_return_std": stds, "absolute_episode_return": absolute[0], "absolute_episode_return_std": absolute[1],
            "actor_sps": sps}


def config_block(text: str) -> str:
    """The resolved config the released script printed (its CONFIG block)."""
    lines = ANSI.sub("", text).splitlines()
    start = next((i for i, l in enumerate(lines) if l.strip() == "CONFIG"), None)
    if start is None:
        return ""
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("MISC - ", "ACTOR - "))), len(lines))
    return "\n".join(lines[start + 1:end]) + "\n"


def run_released(reference: Path, task: str, method: str, c: dict, run_dir: Path) -> bool:
    ok = True
    block = c["updates_per_eval"] * c["num_envs"] * c["rollout_length"]
    for seed in range(c["num_seeds"]):
        seed_dir = run_dir / "released" / f"seed_{seed}"
        if (seed_dir / "evals.json").is_file():
            print(f"released seed {seed}: done, skipped ({seed_dir / 'evals.json'})")
            continue
        if seed_dir.exists():
            print(f"released seed {seed}: an unfinished run in {seed_dir}: deleted, re-running")
            shutil.rmtree(seed_dir)
        seed_dir.mkdir(parents=True)
        overrides = released_overrides(task, method, c, seed, seed_dir)
        command = [str(reference / "venv" / "bin" / "python"), METHODS[method].released_script, *overrides]
        print(f"released seed {seed}: {METHODS[method].released_script} (console -> {seed_dir / 'console.log'})",
              flush=True)
        evaluations = [0]

        def show(line: str) -> str | None:
            found = re.search(r"Episode return mean: (\S+)", line)
            if line.startswith("EVALUATOR - ") and found:
                evaluations[0] += 1
                return f"  released seed {seed} [{evaluations[0]:>4}/{c['num_evals']}] eval return {found.group(1)}"
            if line.startswith("ABSOLUTE - ") and found:
                return f"  released seed {seed} absolute metric: return {found.group(1)}"
            if line.startswith(("Traceback", "Error", "AssertionError")) or "Error:" in line:
                return "  " + line
            return None

        t0 = time.time()
        code = stream(command, reference / "MAGPO", reference_env(reference, task), seed_dir / "console.log", show)
        wall = time.time() - t0
        text = (seed_dir / "console.log").read_text()
        try:
            if code != 0:
                raise ValueError(f"exit code {code}")
            evals = parse_console(text, block)
        except (ValueError, AttributeError) as error:
            tail = " | ".join(ANSI.sub("", text).strip().splitlines()[-4:])
            print(f"released seed {seed} FAILED ({error}): {tail}", file=sys.stderr)
            ok = False
            continue
        (seed_dir / "resolved_config.txt").write_text(config_block(text))
        after_compile = evals["actor_sps"][1:] or evals["actor_sps"]
        evals.update(seed=seed, wall_s=wall, median_actor_sps=statistics.median(after_compile), overrides=overrides,
                     script=METHODS[method].released_script)
        tmp = seed_dir / "evals.json.tmp"
        tmp.write_text(json.dumps(evals, indent=1))
        os.replace(tmp, seed_dir / "evals.json")
        print(f"released seed {seed}: {wall:.0f} s, actor env-steps/s {evals['median_actor_sps']:.0f} "
              f"(median of the windows after the first), absolute metric {evals['absolute_episode_return']:.3f}")
    return ok


def run_ours(method: str, c: dict, run_dir: Path, argv: list[str]) -> bool:
    ours_dir = run_dir / "ours"
    if (ours_dir / "absolute_metric.json").is_file() and (run_dir / "ours.json").is_file():
        print(f"ours: done, skipped ({ours_dir})")
        return True
    if ours_dir.exists():
        print(f"ours: an unfinished run in {ours_dir}: deleted, re-running")
        shutil.rmtree(ours_dir)
    command = [sys.executable, f"{METHODS[method].ours}.py", *argv]
    print(f"ours: {METHODS[method].ours}.py (log -> {run_dir / 'ours.log'})", flush=True)
    t0 = time.time()
    code = stream(command, REPO, dict(os.environ), run_dir / "ours.log", lambda line: "  ours " + line if line else None)
    wall = time.time() - t0
    if code != 0 or not (ours_dir / "absolute_metric.json").is_file():
        tail = " | ".join((run_dir / "ours.log").read_text().strip().splitlines()[-4:])
        print(f"ours FAILED (exit code {code}): {tail}", file=sys.stderr)
        return False
    log = (run_dir / "ours.log").read_text()
    compile_s = re.search(r"compiled in ([0-9.]+)s", log)
    sps = re.findall(r"\| sps\s+([0-9,]+) \|", log)
    info = {"command": [f"{METHODS[method].ours}.py", *argv], "wall_s": wall,
            "compile_s": float(compile_s.group(1)) if compile_s else None,
            "sps_all_seeds": float(sps[-1].replace(",", "")) if sps else None}
    (run_dir / "ours.json").write_text(json.dumps(info, indent=1))
    print(f"ours: {wall:.0f} s (compile {info['compile_s']} s), {info['sps_all_seeds']} env-steps/s over all "
          f"{c['num_seeds']} seed{'s' * (c['num_seeds'] > 1)}")
    return True


def prepare_run(reference: Path, task: str, method: str, c: dict, out_dir: Path, tag: str | None,
                write: bool = True) -> tuple[Path, list]:
    """The run folder with harness.json (a folder of another configuration is refused), both configs printed;
    `write` False: nothing written (--dry-run)."""
    run_dir = (out_dir / run_name(task, method, c, tag)).resolve()
    argv = ours_argv(task, method, c, run_dir)
    args = ours_args(method, argv)
    seed0 = released_overrides(task, method, c, 0, run_dir / "released" / "seed_0")
    composed = composed_config(reference, METHODS[method].released_script, seed0, task)
    header = {"task": task, "method": method, "config": c,
              "released": {"script": METHODS[method].released_script, "overrides_seed_0": seed0,
                           "seeds": list(range(c["num_seeds"]))},
              "ours": {"command": [f"{METHODS[method].ours}.py", *argv], "seeds": "fold_in(PRNGKey(0), i), i < num_seeds"}}
    path = run_dir / "harness.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored["config"] != c:
            diff = {k: (stored["config"].get(k), v) for k, v in c.items() if stored["config"].get(k) != v}
            raise InputError(f"{run_dir} holds a run of another configuration (stored, now: {diff}); "
                             f"use another --out-dir or --tag")
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(header, indent=1))
        (run_dir / "released_config.yaml").write_text(composed)
        (run_dir / "ours_args.json").write_text(json.dumps(args, indent=1))

    seeds = f"{c['num_seeds']} seed{'s' * (c['num_seeds'] > 1)}"
    print(f"\n=== {task} / {method}: {seeds} per side, {c['total_timesteps']:,} steps per seed, "
          f"{c['num_evals']} evaluations of {c['num_eval_episodes']} episodes -> {run_dir}")
    print("configuration (both sides): " + ", ".join(f"{k}={v}" for k, v in c.items()))
    for what, episodes in (("checkpoint", c["num_eval_episodes"]), ("absolute metric", 10 * c["num_eval_episodes"])):
        # the released evaluator plays rounds of min(episodes, arch.num_envs) episodes (mava/evaluator.py)
        group = c["num_envs"] // c["update_batch_size"]
        if episodes > group and episodes % group:
            print(f"NOTE: the released code plays {-(-episodes // group) * group} episodes per {what} evaluation "
                  f"(rounds of arch.num_envs = {group}), ours {episodes}")
    if method == "mappo" and c["update_batch_size"] > 1:
        groups = c["num_envs"] // c["update_batch_size"]
        print(f"NOTE: released update_batch_size {c['update_batch_size']} (groups of {groups} "
              f"envs sharing one key, advantages normalised per group); mappo.py has no such flag and trains one "
              f"batch of {c['num_envs']} envs (docs/fidelity.md L9)")
    print(f"released, seed s (system.seed=s): {METHODS[method].released_script} " + " ".join(seed0))
    print("released, the config Hydra composed (released_config.yaml):")
    print("  " + composed.rstrip().replace("\n", "\n  "))
    print(f"ours: {METHODS[method].ours}.py " + " ".join(argv))
    print("ours, the parsed arguments (ours_args.json): " + ", ".join(f"{k}={v}" for k, v in args.items()))
    return run_dir, argv


# --------------------------------------------------------------------------------------------------
# Reading stored runs, figures, the table
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Side:
    steps: np.ndarray  # (K,) the age of the parameters each checkpoint scored (env steps per seed)
    returns: np.ndarray  # (S, K) mean evaluation return per seed and checkpoint
    absolute: np.ndarray  # (S,) absolute metric per seed
    wall_s: float  # the side's wall time, all its seeds
    sps: float | None  # env-steps/s (released, one seed: its learn calls, the median window; ours: all seeds)


@dataclasses.dataclass
class Stored:
    path: Path
    task: str
    method: str
    config: dict
    released: Side
    ours: Side


def load_stored(run_dir: Path) -> Stored | None:
    """A finished run folder (both sides done), else None."""
    header = json.loads((run_dir / "harness.json").read_text())
    c = header["config"]
    evals = [run_dir / "released" / f"seed_{s}" / "evals.json" for s in range(c["num_seeds"])]
    ours_dir = run_dir / "ours"
    if not all(p.is_file() for p in evals) or not (ours_dir / "absolute_metric.json").is_file() \
            or not (run_dir / "ours.json").is_file():
        return None
    evals = [json.loads(p.read_text()) for p in evals]
    released = Side(np.array(evals[0]["params_steps"]), np.array([e["episode_return"] for e in evals]),
                    np.array([e["absolute_episode_return"] for e in evals]), sum(e["wall_s"] for e in evals),
                    statistics.median(e["median_actor_sps"] for e in evals))
    rows = [json.loads(line) for line in (ours_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    K, S = c["num_evals"], c["num_seeds"]
    returns = np.full((S, K), np.nan)
    steps = np.zeros(K, dtype=int)
    for row in rows:
        returns[row["seed_index"], row["checkpoint"]] = row["eval/episode_return"]
        steps[row["checkpoint"]] = row["step"]
    info = json.loads((run_dir / "ours.json").read_text())
    absolute = np.array(json.loads((ours_dir / "absolute_metric.json").read_text())["absolute/episode_return"])
    sps = info.get("sps_all_seeds")
    return Stored(run_dir, header["task"], header["method"], c, released, Side(steps, returns, absolute,
                                                                              info["wall_s"], sps))


def bootstrap_difference(ours: np.ndarray, released: np.ndarray, resamples: int = 10_000) -> tuple[float, float, float]:
    """mean(ours) - mean(released) and its 95% bootstrap CI, each side's seeds resampled on their own."""
    rng = np.random.default_rng(0)
    a = rng.choice(ours, (resamples, len(ours))).mean(1)
    b = rng.choice(released, (resamples, len(released))).mean(1)
    lo, hi = np.percentile(a - b, [2.5, 97.5])
    return float(ours.mean() - released.mean()), float(lo), float(hi)


def common_auc(run: Stored) -> tuple[np.ndarray, np.ndarray]:
    """Per seed, the mean return over the checkpoints both sides scored at the same parameter age."""
    ages = sorted(set(run.released.steps.tolist()) & set(run.ours.steps.tolist()))
    pick = lambda side: side.returns[:, [side.steps.tolist().index(a) for a in ages]].mean(1)
    return pick(run.released), pick(run.ours)


def equal_ages(run_dir: Path) -> None:
    """--ages: one run's returns at every parameter age, and the best checkpoint of each side among the ages
    both scored (32-episode evaluations, not the absolute metric's re-evaluation): what the table's absolute
    metric compares once ours' one extra block (docs/fidelity.md V2) is left out."""
    run = load_stored(run_dir) if (run_dir / "harness.json").is_file() else None
    if run is None:
        raise InputError(f"{run_dir}: not a finished run folder (both sides' results are needed)")
    rel, ours = run.released, run.ours
    ages = sorted(set(rel.steps.tolist()) & set(ours.steps.tolist()))
    at = lambda side, a: side.returns[:, side.steps.tolist().index(a)] if a in side.steps.tolist() else None
    print(f"{run.path.name}: mean evaluation return over seeds at each parameter age; ours - released [95% CI]")
    for a in sorted(set(rel.steps.tolist()) | set(ours.steps.tolist())):
        r, o = at(rel, a), at(ours, a)
        cells = [f"{x.mean():8.3f}" if x is not None else f"{'-':>8}" for x in (r, o)]
        diff = "{:+.3f} [{:+.3f}, {:+.3f}]".format(*bootstrap_difference(o, r)) if r is not None and o is not None else ""
        print(f"  {fmt_steps(a):>7}  released {cells[0]}  ours {cells[1]}  {diff}")
    pick = lambda side: side.returns[:, [side.steps.tolist().index(a) for a in ages]].max(1)
    print("best checkpoint among the ages both scored ({} to {}): released {:.3f}, ours {:.3f}, "
          "ours - released {:+.3f} [{:+.3f}, {:+.3f}]".format(fmt_steps(ages[0]), fmt_steps(ages[-1]),
                                                              pick(rel).mean(), pick(ours).mean(),
                                                              *bootstrap_difference(pick(ours), pick(rel))))


def plot_run(run: Stored, path: Path, reps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    from plot import mean_and_ci_over_seeds  # benchmarks/plot.py: rliable's bootstrap over seeds

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for side, label, color in ((run.released, "released (liyheng/MAGPO d2ac38b)", "tab:orange"),
                               (run.ours, "ours", "tab:blue")):
        mean, ci = mean_and_ci_over_seeds(side.returns, reps)
        ax.plot(side.steps, mean, color=color, marker="o" if len(side.steps) < 20 else None,
                label=f"{label}, {side.returns.shape[0]} seeds")
        ax.fill_between(side.steps, ci[0], ci[1], color=color, alpha=0.2, linewidth=0)
    c = run.config
    ax.set(xlabel="environment steps per seed (age of the parameters evaluated)", ylabel="evaluation return",
           title=f"{run.task}: {LABELS[run.method]}, {fmt_steps(c['total_timesteps'])} steps, "
                 f"{c['num_eval_episodes']} episodes per checkpoint")
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt_wall(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def table(runs: list[Stored], figures: Path, page: Path) -> str:
    header = ["task", "method", "steps per seed × seeds", "absolute: released", "absolute: ours",
              "ours − released [95% CI]", "AUC: released", "AUC: ours", "ours − released [95% CI]",
              "wall: released (seeds in turn)", "wall: ours (seeds batched)",
              "env-steps/s: released (one seed), ours (all seeds)",
              "figure"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        c = run.config
        cells = [run.task, LABELS[run.method], f"{fmt_steps(c['total_timesteps'])} × {c['num_seeds']}"]
        for released, ours in [(run.released.absolute, run.ours.absolute), common_auc(run)]:
            d, lo, hi = bootstrap_difference(ours, released)
            cells += [f"{released.mean():.2f} ± {released.std():.2f}", f"{ours.mean():.2f} ± {ours.std():.2f}",
                      f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]"]
        sps = lambda x: f"{x:,.0f}" if x else "–"
        figure = os.path.relpath(figures / f"{run.path.name}.png", page.parent)
        cells += [fmt_wall(run.released.wall_s), fmt_wall(run.ours.wall_s),
                  f"{sps(run.released.sps)}, {sps(run.ours.sps)}", f"[png]({figure})"]
        lines.append("| " + " | ".join(cells) + " |")
    if not runs:
        lines.append("| (no finished run stored yet) |" + " |" * (len(header) - 1))
    return "\n".join(lines)


PAGE_TEMPLATE = f"""# Learning side by side with the released code

Written by `python benchmarks/compare_reference.py` (its docstring says what is compared).

{MARK_BEGIN}
{MARK_END}
"""


def redraw(out_dir: Path, figures: Path, page: Path, reps: int) -> None:
    """Every figure and the table, from the finished runs stored under out_dir."""
    runs = []
    for run_dir in sorted(p for p in out_dir.glob("*") if (p / "harness.json").is_file()) if out_dir.is_dir() else []:
        try:
            run = load_stored(run_dir)
        except (OSError, ValueError, KeyError, IndexError) as error:
            print(f"ignored {run_dir}: unreadable ({type(error).__name__}: {error})")
            continue
        if run is None:
            print(f"ignored {run_dir}: not finished (a side's results are missing)")
            continue
        np.random.seed(0)  # rliable draws from numpy's global generator: reproducible figures
        plot_run(run, figures / f"{run_dir.name}.png", reps)
        print(f"{figures / (run_dir.name + '.png')}")
        runs.append(run)
    text = page.read_text() if page.is_file() else PAGE_TEMPLATE
    if MARK_BEGIN not in text or MARK_END not in text:
        raise InputError(f"{page} has no table markers ({MARK_BEGIN} ... {MARK_END})")
    before, rest = text.split(MARK_BEGIN, 1)
    after = rest.split(MARK_END, 1)[1]
    note = f"<!-- written by benchmarks/compare_reference.py from {len(runs)} stored runs; do not edit by hand -->"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(f"{before}{MARK_BEGIN}\n{note}\n\n{table(runs, figures, page)}\n\n{MARK_END}{after}")
    print(f"{page}: {len(runs)} rows")


# --------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = Parser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["coordsum-3x10"], metavar="TASK",
                        help=f"our env ids: {', '.join(TASKS)}")
    parser.add_argument("--methods", nargs="+", default=["mappo"], metavar="METHOD", help=f"{', '.join(METHODS)}")
    parser.add_argument("--reference", type=Path, default=REPO / ".reference", help="the folder setup.sh built")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results" / "reference_check",
                        help="where the runs are stored (the committed ones: benchmarks/results/reference_check/)")
    parser.add_argument("--figures", type=Path, default=REPO / "docs" / "reference_check", help="where the PNGs go")
    parser.add_argument("--page", type=Path, default=REPO / "docs" / "reference_check.md",
                        help="the markdown page whose table (between its markers) is rewritten")
    parser.add_argument("--tag", help="appended to the run folders' names (another configuration of the same budget)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples of the figures' CIs")
    parser.add_argument("--check-patch", action="store_true", help="only check the decay-mask patch, then exit")
    parser.add_argument("--plot-only", action="store_true", help="only redraw the figures and the table")
    parser.add_argument("--dry-run", action="store_true", help="print both sides' configurations, run nothing")
    parser.add_argument("--ages", type=Path, metavar="RUN_DIR",
                        help="only print one stored run's returns at every parameter age and its equal-age best checkpoints")
    for key, kind in FLAG_TYPES.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=kind, default=None,
                            help=f"default: {', '.join(f'{m} {v}' for m, v in _defaults(key))}")
    opts = parser.parse_args(argv)
    try:
        if opts.check_patch:
            check_patch(opts.reference.resolve())
            return 0
        if opts.plot_only:
            redraw(opts.out_dir, opts.figures, opts.page, opts.reps)
            return 0
        if opts.ages:
            equal_ages(opts.ages)
            return 0
        for task in opts.tasks:
            if task not in TASKS:
                raise InputError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
        for method in opts.methods:
            if method not in METHODS:
                raise InputError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
        reference = opts.reference.resolve()
        for task in opts.tasks:
            check_reference(reference, task)
        given = {key: getattr(opts, key) for key in FLAG_TYPES}
        for key, value in given.items():  # a flag applies to the methods that have the setting
            if value is not None and not any(key in {**METHODS[m].defaults, **COMMON} for m in opts.methods):
                raise InputError(f"--{key.replace('_', '-')} is not a setting of {', '.join(opts.methods)}")
        plans = [(task, method, resolve_config(method, given)) for task in opts.tasks for method in opts.methods]
        check_patch(reference)  # before any reference run
        prepared = [(task, method, c, *prepare_run(reference, task, method, c, opts.out_dir, opts.tag, not opts.dry_run))
                    for task, method, c in plans]
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if opts.dry_run:
        return 0
    failed = []
    for task, method, c, run_dir, argv in prepared:
        print(f"\n=== running {run_dir.name}", flush=True)
        ok = run_released(reference, task, method, c, run_dir)
        ok &= run_ours(method, c, run_dir, argv)
        if not ok:
            failed.append(run_dir.name)
    try:
        redraw(opts.out_dir, opts.figures, opts.page, opts.reps)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if failed:
        print(f"failed: {', '.join(failed)} (re-run the same command to retry them)", file=sys.stderr)
        return 1
    return 0


def _defaults(key: str):
    if key in COMMON:
        return [("all", COMMON[key])]
    return [(m, M.defaults[key]) for m, M in METHODS.items() if key in M.defaults]


if __name__ == "__main__":
    sys.exit(main())
