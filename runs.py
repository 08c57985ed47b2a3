"""The run plumbing shared by the five training scripts (ippo.py, mappo.py, magpo_sable.py,
magpo_mat.py, ctds.py): everything around the algorithm that is the same in all of them.

- the command line: `RunArgs` (the flags that are not the algorithm's, which every script's Args
  extends), `parse_args` (tyro, its errors reduced to one line), `ArgError` and `cli`
  (a bad input is one line `error: ...` on stderr and exit code 2), the generic flag checks
  `check_run_args`, and --preset paper's lookup in paper_params.csv (`paper_row`, `PRESET_COLUMNS`, `preset_values`);
- the run folder: `make_run_dir` (runs/<run-name>/, never overwritten) and `start_run`
  (config.json, wandb, the header line);
- the compiled run: `Train` (a script's init and train), `scan_checkpoints`, `shard_seeds` (the seed
  axis across devices) and `compile_and_run`; two helpers called inside it, `mean_gradient` (a minibatch's
  gradient as the mean of its microbatches') and `checkpoint_summary` (a checkpoint's training metrics);
- resuming (--resume): `resumed_args` (the run's own flags), `Reporter.write_state` / `restore`
  (state.msgpack at every checkpoint) and `restore_runner`;
- the results: `Reporter` (the progress line, metrics.jsonl, marl_eval.json, absolute_metric.json,
  wandb), `finish_run`, `save_models` (models/seed_<i>_{final,best}.msgpack) and the generic part
  of `evaluate_saved` (--eval-from);
- `TanhNormal`, the continuous policy's distribution (Mava's tanh-squashed Normal, with its clipped
  log_prob and one-sample entropy: a distribution, as distrax.Categorical is; the action head that
  builds it and the losses that use it stay in each script);
- `fmt_time`.

None of it is the algorithm: a script's hyperparameters (its Args), networks, losses, jitted
training scan and evaluation stay in the script, which passes in what differs (its name, the name of
its method in the results, how to rebuild the policy it saved). To prototype a new method, copy one
script with envs.py and this file.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, NamedTuple

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import tyro

import envs


# ==================================================================================================
# The continuous policy's distribution (a distribution, as distrax.Categorical is; the action head that
# builds it, and the losses that use it, are in each script)
# ==================================================================================================
LOG_PROB_CLIP = 0.999  # Mava's threshold: log_prob clips actions to [-0.999, 0.999]


class TanhNormal(NamedTuple):
    """The continuous policy as Mava builds it (mava/networks/distributions.py's
    TanhTransformedDistribution of a Normal, in a tfd.Independent over the action dimensions): a
    diagonal Normal(loc, scale) squashed by tanh. Its actions are the squashed samples, in [-1, 1]:
    what the rollout stores, the guiders' decoders read and the env gets. Batch shape loc.shape[:-1].

    - log_prob clips the action to ±0.999 first; at or beyond the clip it is the log of the Normal's
      mass beyond ±atanh(0.999), spread over the width 1e-3 (finite and differentiable at ±1);
      inside, the Normal's log-density at atanh(a) minus log|d tanh/dx| there.
    - entropy(seed) is Mava's one-sample estimate: the Normal's entropy plus log|d tanh/dx| at one
      reparameterised draw x ~ Normal, so the bonus also pushes the draws away from saturation.
    - mode is tanh(loc); the KL is the two Normals', in closed form (what tfd.kl_divergence gives
      for two such distributions: a KL does not change under the bijection tanh)."""

    loc: jax.Array  # (..., K) the Normal's mean
    scale: jax.Array  # (..., K) its std

    @staticmethod
    def tanh_log_det(x):
        """log|d tanh(x)/dx| = log(1 - tanh(x)^2), in tfb.Tanh's stable form."""
        return 2.0 * (math.log(2.0) - x - jax.nn.softplus(-2.0 * x))

    def draw(self, seed, sample_shape=()):
        """A reparameterised draw of the Normal, before tanh (tfd.Normal's, key for key)."""
        return self.loc + self.scale * jax.random.normal(seed, tuple(sample_shape) + self.loc.shape)

    def sample(self, seed, sample_shape=()):
        return jnp.tanh(self.draw(seed, sample_shape))

    def log_prob(self, action):
        a = jnp.clip(action, -LOG_PROB_CLIP, LOG_PROB_CLIP)
        x = jnp.arctanh(a)
        normal = -0.5 * jnp.square((x - self.loc) / self.scale) - jnp.log(self.scale) - 0.5 * math.log(2 * math.pi)
        edge, log_width = jnp.arctanh(jnp.float32(LOG_PROB_CLIP)), math.log(1.0 - LOG_PROB_CLIP)
        left = jax.scipy.special.log_ndtr((-edge - self.loc) / self.scale) - log_width  # log P(x <= -edge) / 1e-3
        right = jax.scipy.special.log_ndtr((self.loc - edge) / self.scale) - log_width  # log P(x >= edge) / 1e-3
        inside = normal - self.tanh_log_det(x)
        return jnp.where(a <= -LOG_PROB_CLIP, left, jnp.where(a >= LOG_PROB_CLIP, right, inside)).sum(-1)

    def sample_and_log_prob(self, seed):
        action = self.sample(seed)
        return action, self.log_prob(action)

    def entropy(self, seed):
        # NOTE(paper vs official code): the paper's bonus is the policy's entropy; the released code's
        # is this one-sample estimate of the squashed policy's (noisier, and it penalises saturation)
        normal = 0.5 * math.log(2 * math.pi * math.e) + jnp.log(self.scale)
        return (normal + self.tanh_log_det(self.draw(seed))).sum(-1)

    def mode(self):
        return jnp.tanh(self.loc)

    def kl_divergence(self, other: TanhNormal):
        """KL(self || other) of the two Normals (tfd's formula), summed over the action dimensions."""
        diff_log_scale = jnp.log(self.scale) - jnp.log(other.scale)
        return (0.5 * jnp.square(self.loc / other.scale - other.loc / other.scale)
                + 0.5 * jnp.expm1(2.0 * diff_log_scale) - diff_log_scale).sum(-1)


# ==================================================================================================
# The command line
# ==================================================================================================
class Diverged(RuntimeError):
    """Raised by finish_run, after every result is written, when a seed diverged: the one-line summary,
    exit code 1."""


class Interrupted(RuntimeError):
    """Ctrl-C during a run: raised after the checkpoint in progress is written, exit code 130."""


class ArgError(ValueError):
    """A bad flag value: reported as one line on stderr, exit code 2."""


def parse_args(args_type: type, apply_preset: Callable, description: str, argv=None):
    """tyro's parser for the dataclass `args_type`, with its errors reduced to one line on stderr and
    exit code 2; then `apply_preset(args, explicit flags)` (the script's --preset, under every flag
    given on the command line). `description`: the script's docstring (its first paragraph is --help's)."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer), contextlib.redirect_stdout(buffer):
            args = tyro.cli(args_type, args=argv, description=description.split("\n\n")[0])
    except SystemExit as exit:
        if exit.code in (0, None):  # --help
            sys.stdout.write(grouped_help(buffer.getvalue(), args_type))
            raise
        # tyro's box: a title, a rule, the message (wrapped over several lines), a rule, a hint
        lines = [l.strip(" │╭╰╮╯|") for l in buffer.getvalue().splitlines()]
        rules = [i for i, l in enumerate(lines) if l and not set(l) - set("─-")]
        body = lines[rules[0] + 1:rules[1]] if len(rules) > 1 else []
        message = " ".join(l.strip() for l in body if l.strip()) or "invalid arguments"
        raise ArgError(f"{message} (see --help)") from None
    given = {a.lstrip("-").split("=")[0].replace("-", "_") for a in (argv if argv is not None else sys.argv[1:])
             if a.startswith("--")}
    given = {name[3:] if name.startswith("no_") and not hasattr(args, name) else name for name in given}  # --no-<flag>
    if getattr(args, "resume", None):
        return resumed_args(args, args_type, given)
    return apply_preset(args, given)


def resumed_args(args, args_type: type, given: set[str]):
    """(resume) --resume <run folder>: the flags the run was started with (its config.json), with the
    output flags given now (--track, --save-model, ...). A flag that changes the run and differs from
    the run's own value is refused, naming it; so is a folder of another script, a finished run, or
    --out-dir / --run-name / --eval-from beside --resume."""
    run_dir = Path(args.resume)
    clash = sorted(given & {"out_dir", "run_name", "eval_from"})
    if clash:
        flags = ", ".join("--" + c.replace("_", "-") for c in clash)
        raise ArgError(f"--resume continues the run in its own folder: drop {flags}")
    try:
        config = json.loads((run_dir / "config.json").read_text())
        saved_args = config["args"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ArgError(f"--resume {run_dir}: not a run folder (no readable config.json)") from None
    script = Path(sys.modules[args_type.__module__].__file__).stem
    if config.get("algo") != script and script != "__main__":
        raise ArgError(f"--resume {run_dir}: trained by {config.get('algo')}.py, not {script}.py")
    if (run_dir / "absolute_metric.json").is_file():
        raise ArgError(f"--resume {run_dir}: the run is finished (it has its absolute_metric.json)")
    fields = {f.name for f in dataclasses.fields(args_type)}
    saved = args_type(**{k: v for k, v in saved_args.items() if k in fields})
    differ = sorted(name for name in given - OUTPUT_FLAGS if name in fields and getattr(args, name) != getattr(saved, name))
    if differ:
        named = ", ".join(f"--{n.replace('_', '-')} {getattr(args, n)} (the run's: {getattr(saved, n)})" for n in differ)
        raise ArgError(f"--resume {run_dir}: {named}; a resumed run keeps the flags it was started with")
    own = {name: getattr(args, name) for name in given & OUTPUT_FLAGS if name in fields}
    own.update(resume=str(run_dir), out_dir=str(run_dir.parent), run_name=run_dir.name)
    return dataclasses.replace(saved, **own)


# The flags that change nothing a run computes: the only ones --resume lets differ from the run's config.json.
OUTPUT_FLAGS = {"out_dir", "run_name", "track", "wandb_project", "save_model", "eval_from", "resume", "save_state"}


def grouped_help(text: str, args_type: type) -> str:
    """tyro's --help (one `options` group, the fields in Args' order) as two groups: the flags every
    script shares, then the script's own (from the first field after SHARED_FLAGS)."""
    lines = text.splitlines(keepends=True)
    header = next((i for i, l in enumerate(lines) if l.strip() == "options"), None)
    own = [f.name for f in dataclasses.fields(args_type) if f.name not in SHARED_FLAGS]
    if header is None:
        return text
    retitle = lambda line, title: f" {title}".ljust(len(line.rstrip("\n"))) + "\n"
    lines[header] = retitle(lines[header], "options shared by every script" if own else "options (every script has them)")
    flag = "--" + own[0].replace("_", "-") if own else None
    first = next((i for i, l in enumerate(lines) if flag and l.split()[:1] in ([flag], [flag + ","])), None)
    if first is not None:  # a blank line, the group's title and tyro's rule before the script's first own flag
        script = Path(sys.modules[args_type.__module__].__file__).name
        lines[first:first] = ["\n", retitle(lines[header], f"options of {script}"), lines[header + 1]]
    return "".join(lines)


def default_is(description: str):
    """A flag whose default (None in Args) is decided later: --help shows `description` as its default
    instead of None (`Annotated[int | None, runs.default_is("the whole rollout")] = None`)."""
    return tyro.conf.arg(help_behavior_hint=f"(default: {description})")


@dataclasses.dataclass(frozen=True)
class RunArgs:
    """The flags of a run that are not the algorithm's (the task, the seeds, the budget, the evaluation
    protocol, the output): every script's Args subclasses this and adds its hyperparameters."""

    env_id: str = "rware-tiny-4ag"
    """task id, `family-task` (see envs.ENV_IDS / docs/environments.md), e.g. coordsum-3x10, rware-tiny-4ag"""
    seed: int = 0
    """base seed: seed i of the run uses fold_in(PRNGKey(seed), i), the same keys and data whatever --num-seeds;
    its numbers equal a run with other --num-seeds up to float rounding (XLA vectorises differently), which
    then grows over training as in any chaotic system"""
    num_seeds: int = 10
    """independent seeds trained together in one compiled call (vmapped)"""
    total_timesteps: int = 20_000_000
    """environment steps per seed (each step moves all agents of one environment)"""
    num_evals: int = 122
    """evaluation checkpoints, evenly spaced over training"""
    num_eval_episodes: int = 32
    """episodes per checkpoint (each on its own eval env); the absolute metric uses 10x as many"""
    greedy_eval: bool = False
    """evaluate with the most likely action instead of sampling (the paper samples)"""
    preset: Literal["paper"] | None = None
    """'paper': the paper's tuned hyperparameters for this task (paper_params.csv); explicit flags win"""
    out_dir: str = "runs"
    """where each run gets its own folder"""
    run_name: Annotated[str | None, default_is("<env-id>__<algo>__<seed>__<time>")] = None
    """folder name under out_dir; never overwritten"""
    track: bool = False
    """log to Weights & Biases (WANDB_MODE=offline works without a network)"""
    wandb_project: str = "magpo"
    """wandb project under --track"""
    save_model: bool = False
    """save each seed's final and best-checkpoint actor to runs/<run>/models/"""
    eval_from: str | None = None
    """instead of training, reload the saved actors of this run folder and evaluate them"""
    resume: str | None = None
    """continue this run folder from its last checkpoint (runs/<run>); its other flags are the run's own"""
    save_state: bool = True
    """write the whole training state at every checkpoint (state.msgpack), which --resume continues from"""

    # The budget in updates (num_envs and rollout_length are the script's flags): whole updates per checkpoint.
    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.rollout_length

    @property
    def num_updates(self) -> int:
        return self.updates_per_eval * self.num_evals

    @property
    def updates_per_eval(self) -> int:
        return self.total_timesteps // self.steps_per_update // self.num_evals


# The flags every script's Args starts with, spelled and ordered identically (tests/test_runs.py checks it):
# RunArgs', then the PPO settings that every script declares itself.
SHARED_FLAGS = (*(f.name for f in dataclasses.fields(RunArgs)), "num_envs", "rollout_length", "num_minibatches",
                "ppo_epochs", "lr", "gamma", "gae_lambda", "clip_eps", "ent_coef", "vf_coef", "max_grad_norm",
                "recurrent_chunk_size", "hidden_dim")


def paper_row(args, system: str, required: bool = True) -> dict | None:
    """--preset paper: the row of paper_params.csv (the paper's tuned hyperparameters, one row per
    method and task) for `system` on args.env_id; None without --preset. A missing row is an
    ArgError naming the tasks the paper has for that method, or None when not `required`."""
    if args.preset is None:
        return None
    if args.preset != "paper":
        raise ArgError(f"unknown --preset {args.preset!r}; the only preset is 'paper'")
    family, _, task = args.env_id.partition("-")
    task = "con-" + task if family == "connector" else task
    path = Path(__file__).with_name("paper_params.csv")
    with open(path) as f:
        rows = [{k: v.strip() for k, v in row.items()} for row in csv.DictReader(f)]
    row = next((r for r in rows if r["system_name"] == system and r["task"] == task and r["env_name"] == family), None)
    if row is None and required:
        have = sorted(f"{r['env_name']}-{r['task']}" for r in rows if r["system_name"] == system)
        raise ArgError(f"the paper lists no {system} configuration for {args.env_id}; it has: {', '.join(have)}")
    return row


# paper_params.csv's columns -> (flag, type), the flags spelled alike in every script; each script takes those its
# Args has. The paper's 64 envs x update_batch_size 2 are our 128 envs (num_envs is not taken). One learning rate
# for every network: the guided methods' CoordSum rows store it as critic_lr (no row gives two different ones).
PRESET_COLUMNS = {
    "num_minibatches": ("num_minibatches", int), "max_grad_norm": ("max_grad_norm", float),
    "ppo_epochs": ("ppo_epochs", int), "clip_eps": ("clip_eps", float),
    "recurrent_chunk_size": ("recurrent_chunk_size", int), "ent_coef": ("ent_coef", float),
    "actor_lr": ("lr", float), "critic_lr": ("lr", float), "n_embd": ("embed_dim", int), "n_head": ("n_head", int),
    "n_block": ("n_block", int), "decay_scaling_factor": ("decay_scaling_factor", float),
    "alpha": ("lam", float), "delta": ("delta", float),
}


def preset_values(args, row: dict | None, explicit: set[str], skip: tuple[str, ...] = ()):
    """args with the values of `row` (None: args as they are) for every flag of PRESET_COLUMNS that args
    has, but the csv columns in `skip`, under every flag in `explicit` (those given on the command line win)."""
    if row is None:
        return args
    fields = {field.name for field in dataclasses.fields(args)}
    values = {flag: cast(row[col]) for col, (flag, cast) in PRESET_COLUMNS.items()
              if flag in fields and col not in skip and row.get(col)}
    return dataclasses.replace(args, **{k: v for k, v in values.items() if k not in explicit})


def check_run_args(args, positive: tuple[str, ...] = ()) -> None:
    """The checks every script's check_args starts with, on the shared flags: no nan or inf in a
    float flag, a --run-name that is a plain folder name, sizes that are positive (and the script's
    own `positive` ones, where given), and a batch that splits as the flags say."""
    for field in dataclasses.fields(args):  # nan or inf would train silently to nan
        value = getattr(args, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ArgError(f"--{field.name.replace('_', '-')} must be a finite number, got {value}")
    if not 0 <= args.seed < 2**31 // SEED_KEY_BASE or args.num_seeds > SEED_KEY_BASE:  # marl_eval.json's seed keys
        raise ArgError(f"--seed must lie in [0, {2**31 // SEED_KEY_BASE}) and --num-seeds be at most {SEED_KEY_BASE}, "
                       f"got {args.seed} and {args.num_seeds}")
    if args.run_name is not None and (Path(args.run_name).name != args.run_name or args.run_name in ("", ".", "..")):
        raise ArgError(f"--run-name must be a plain folder name (no path separator, not '.' or '..'), "
                       f"got {args.run_name!r}")
    sizes = ["num_seeds", "total_timesteps", "num_envs", "rollout_length", "num_minibatches", "ppo_epochs",
             "num_evals", "num_eval_episodes", "hidden_dim", *positive]
    for name in sizes:  # None: a default computed later (--microbatch-size)
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise ArgError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ["lr", "clip_eps", "max_grad_norm"]:
        if not getattr(args, name) > 0:
            raise ArgError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not 0 <= args.gamma <= 1 or not 0 <= args.gae_lambda <= 1:
        raise ArgError("--gamma and --gae-lambda must lie in [0, 1]")
    if args.rollout_length % args.chunk_size:
        raise ArgError(f"--recurrent-chunk-size {args.chunk_size} must divide --rollout-length {args.rollout_length}")
    sequences = args.num_envs * (args.rollout_length // args.chunk_size)
    groups = getattr(args, "update_batch_size", None)  # the guided scripts' released-code batch groups
    if groups is not None:
        if groups < 1 or args.num_envs % groups:
            raise ArgError(f"--update-batch-size {groups} must be positive and divide --num-envs {args.num_envs}")
        if (sequences // groups) % args.num_minibatches:
            raise ArgError(f"--num-minibatches {args.num_minibatches} must divide the {sequences // groups} "
                           f"sequences of each of the --update-batch-size {groups} groups")
    if sequences % args.num_minibatches:
        raise ArgError(f"--num-minibatches {args.num_minibatches} must divide the {sequences} sequences "
                       f"of an update (num_envs x rollout_length / recurrent_chunk_size)")
    if args.updates_per_eval < 1:
        raise ArgError(f"--total-timesteps {args.total_timesteps} is too small for {args.num_evals} evaluations: "
                       f"it needs at least num_evals x num_envs x rollout_length = "
                       f"{args.num_evals * args.steps_per_update} steps")


def cli(main: Callable[[], Any]) -> None:
    """A script's `if __name__ == "__main__"`: run `main()`; a bad flag or an unknown task is one
    line `error: ...` on stderr and exit code 2 (no traceback)."""
    try:
        main()
    except (ArgError, envs.UnknownEnvError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except Diverged as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except Interrupted as error:
        print(f"interrupted: {error}", file=sys.stderr)
        sys.exit(130)


# ==================================================================================================
# The run folder
# ==================================================================================================
def fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def make_run_dir(args, system: str) -> Path:
    """args.out_dir/args.run_name (default: <env-id>__<system>__<seed>__<time>), created; a name
    already taken gets a suffix -2, -3, ... (a run never overwrites another)."""
    name = args.run_name or f"{args.env_id}__{system}__{args.seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    base = Path(args.out_dir) / name
    path, n = base, 1
    while True:
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:  # never overwrite another run
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        except OSError as error:  # not a folder, no permission, a read-only disk
            raise ArgError(f"--out-dir {args.out_dir}: cannot create the run folder {path}: "
                           f"{error.strerror or error}") from None


def start_run(args, env: envs.MultiAgentEnv, algo: str, system: str):
    """The run folder with its config.json (which script trained it, under which method name, every
    flag), wandb under --track, and the header line. Returns (run_dir, wandb_runs or None).

    Under --track each seed is a wandb run of its own, named <run>__seed_<i> and grouped by the run's
    name (`group=`), so that wandb's grouping shows the mean and spread over seeds."""
    if args.resume:  # (resume) the run's own folder and config.json, checked by resumed_args
        run_dir = Path(args.resume)
        config = json.loads((run_dir / "config.json").read_text())
    else:
        run_dir = make_run_dir(args, system)
        config = {"algo": algo, "system": system, "args": dataclasses.asdict(args), "env": repr(env),
                  "num_updates": args.num_updates, "steps_per_seed": args.num_updates * args.steps_per_update}
        if args.track:  # the runs' ids, so that --resume continues the same wandb runs
            config["wandb_ids"] = [f"{os.urandom(6).hex()}s{s}" for s in range(args.num_seeds)]
        (run_dir / "config.json").write_text(json.dumps(config, indent=1))
    wandb_runs = None
    if args.track:
        import wandb

        ids = config.get("wandb_ids") or [None] * args.num_seeds
        wandb_runs = [wandb.init(project=args.wandb_project, group=run_dir.name, name=f"{run_dir.name}__seed_{s}",
                                 job_type=system, config={**config, "seed_index": s}, dir=str(run_dir),
                                 id=ids[s], resume="allow", reinit="create_new") for s in range(args.num_seeds)]
    verb = "resuming" if args.resume else "->"
    print(f"{system} on {env!r}\n{args.num_seeds} seeds x {args.num_updates} updates x "
          f"{args.steps_per_update} steps = {config['steps_per_seed']:,} steps per seed {verb} {run_dir}", flush=True)
    return run_dir, wandb_runs


# ==================================================================================================
# Reporting: progress lines, results on disk, wandb
# ==================================================================================================
SEED_KEY_BASE = 10_000  # marl_eval.json's seed keys: seed_<--seed x SEED_KEY_BASE + index> (Reporter.seed_entry)


class Reporter:
    """Gathers the per-seed callbacks of each checkpoint; once all seeds have reported it prints one
    progress line, appends the checkpoint to the run's files, and logs to wandb.

    `system` names the method in marl_eval.json (marl-eval's nesting: family / task / system /
    seed_<i>). `columns` maps a metric the training reports to a label: where that metric is present
    the progress line gets a column `| label <seed mean>` after the evaluation (the guided scripts
    show their guider's own return that way). `tags` maps a seed index to what its metrics.jsonl rows
    carry besides (benchmarks/tune.py: the trial and its settings of each lane).

    A seed whose metrics stop being finite (a loss, or `params/max_abs`: a parameter) has diverged: it
    is reported at that checkpoint (stderr: which seed, which metrics), from then on its rows in every
    output say `"diverged": true` instead of numbers computed from NaN, the progress line is over the
    other seeds, and finish_run ends the run with exit code 1."""

    def __init__(self, args, env: envs.MultiAgentEnv, run_dir: Path, wandb_runs=None, *, system: str,
                 columns: dict[str, str] | None = None, tags: dict[int, dict] | None = None):
        self.args, self.env, self.run_dir, self.wandb = args, env, run_dir, wandb_runs  # one wandb run per seed
        self.columns, self.tags = columns or {}, tags or {}
        self.pending: dict[int, dict[int, dict]] = {}
        self.start = time.time()
        self.system = system
        self.marl_eval = {env.family: {env.env_id: {self.system: {}}}}  # marl-eval's nesting
        self.diverged: dict[int, tuple[int, list[str]]] = {}  # seed -> (checkpoint, the metrics not finite)
        self.stop_requested = False  # Ctrl-C (stop_on_ctrl_c): the next checkpoint's callback stops the run
        self.written = 0  # checkpoints written so far
        self.pending_state: dict[int, dict[int, Any]] = {}  # checkpoint -> seed -> its runner state
        self.elapsed_before = 0.0  # (resume) the training time of the run before it was resumed
        self.resumed_leaves = None  # (resume) the saved runner state's leaves, stacked over seeds
        if args.resume:
            self.restore()

    def seed_entry(self, seed_index: int) -> dict:
        """marl_eval.json's entry of a seed. Its key `seed_<n>` is what marl-eval's merge accepts, with
        n = --seed x 10,000 + the seed's index: unique across runs of other --seed values (seed_0 ... of
        the default --seed 0), so merged runs never overwrite each other's seeds."""
        runs_of_system = self.marl_eval[self.env.family][self.env.env_id][self.system]
        return runs_of_system.setdefault(f"seed_{self.args.seed * SEED_KEY_BASE + seed_index}", {})

    def steps_at(self, checkpoint: int) -> int:
        return (checkpoint + 1) * self.args.updates_per_eval * self.args.steps_per_update

    def __call__(self, seed_index, checkpoint, metrics, runner=None):
        """One seed's checkpoint: its metrics and, unless --no-save-state, its whole runner state."""
        if self.stop_requested:  # raised inside the compiled run's callback: XLA stops the run here
            raise Interrupted("Ctrl-C")
        seed_index, checkpoint = int(seed_index), int(checkpoint)
        metrics = jax.tree_util.tree_map(np.asarray, metrics)
        self.pending.setdefault(checkpoint, {})[seed_index] = metrics
        self.pending_state.setdefault(checkpoint, {})[seed_index] = runner
        if len(self.pending[checkpoint]) == self.args.num_seeds:
            self.flush(checkpoint, self.pending.pop(checkpoint))
            kill_point(checkpoint, "files")
            runners = self.pending_state.pop(checkpoint)
            if self.args.save_state and all(r is not None for r in runners.values()):
                self.write_state(checkpoint, [runners[s] for s in range(self.args.num_seeds)])

    # ----------------------------------------------------------------- (resume) the run's state on disk
    def write_state(self, checkpoint: int, runners: list):
        """state.msgpack: every seed's runner state after `checkpoint` (stacked over seeds, as the
        compiled run holds it) and what the Reporter has gathered, written atomically (a killed run
        leaves the previous checkpoint's file whole)."""
        leaves = [np.stack(x) for x in zip(*(jax.tree_util.tree_leaves(r) for r in runners))]
        reporter = {"marl_eval": self.marl_eval, "elapsed": time.time() - self.start,
                    "diverged": {str(s): list(v) for s, v in self.diverged.items()}}
        state = {"checkpoint": checkpoint, "reporter": json.dumps(reporter),
                 "leaves": {str(i): leaf for i, leaf in enumerate(leaves)}}
        tmp = self.run_dir / "state.msgpack.tmp"
        tmp.write_bytes(flax.serialization.msgpack_serialize(state))
        kill_point(checkpoint, "state_tmp")
        os.replace(tmp, self.run_dir / "state.msgpack")
        kill_point(checkpoint, "state")

    def restore(self):
        """--resume: the Reporter as it was after the run's last saved checkpoint; metrics.jsonl cut
        back to that checkpoint (a run killed between its files and its state wrote one more)."""
        path = self.run_dir / "state.msgpack"
        if not path.is_file():
            raise ArgError(f"--resume {self.run_dir}: no state.msgpack (the run stopped before its first checkpoint "
                           f"or ran with --no-save-state): train it again")
        try:
            state = flax.serialization.msgpack_restore(path.read_bytes())
            checkpoint, reporter = int(state["checkpoint"]), json.loads(state["reporter"])
            self.resumed_leaves = [state["leaves"][str(i)] for i in range(len(state["leaves"]))]
        except Exception as error:  # msgpack's errors for a cut or foreign file have no common base
            raise ArgError(f"{path}: not a run state (truncated or another format: {type(error).__name__})") from None
        self.written = checkpoint + 1
        self.marl_eval = reporter["marl_eval"]
        self.diverged = {int(s): (c, bad) for s, (c, bad) in reporter["diverged"].items()}
        self.elapsed_before = reporter["elapsed"]
        rows = (self.run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
        kept = [row for row in rows if checkpoint_of(row) is not None and checkpoint_of(row) <= checkpoint]
        tmp = self.run_dir / "metrics.jsonl.tmp"
        tmp.write_text("".join(kept))
        os.replace(tmp, self.run_dir / "metrics.jsonl")
        self.write_marl_eval()

    def check_finite(self, checkpoint, by_seed):
        """(faults) Mark the seeds whose metrics are no longer finite as diverged, and say so once."""
        for s in sorted(by_seed):
            bad = [k for k, v in by_seed[s].items() if not np.isfinite(v).all()]
            if bad and s not in self.diverged:
                self.diverged[s] = (checkpoint, bad)
                print(f"seed {s} diverged at checkpoint {checkpoint + 1} (step {self.steps_at(checkpoint):,}): "
                      f"{', '.join(bad)} not finite; its later checkpoints are marked diverged, the other seeds "
                      f"go on", file=sys.stderr, flush=True)

    def flush(self, checkpoint, by_seed):
        self.written = checkpoint + 1
        args, steps = self.args, self.steps_at(checkpoint)
        elapsed = time.time() - self.start
        sps = steps * args.num_seeds / max(elapsed, 1e-9)
        self.check_finite(checkpoint, by_seed)
        marked = {"checkpoint": checkpoint, "step": steps, "seed": args.seed, "diverged": True}
        diverged = [s for s in sorted(by_seed) if s in self.diverged]
        seeds = [s for s in sorted(by_seed) if s not in self.diverged]  # the seeds that report numbers
        if not seeds:  # every seed diverged: nothing but the marks
            print(f"[{checkpoint + 1:>4}/{args.num_evals}] steps {steps:>11,} | every seed diverged", flush=True)
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.writelines(json.dumps({**marked, "seed_index": s, **self.tags.get(s, {})}) + "\n" for s in diverged)
            self.mark_marl_eval(checkpoint, steps, diverged)
            return
        returns = np.array([by_seed[s]["eval/episode_return"].mean() for s in seeds])
        metric = np.array([by_seed[s]["eval/episode_metric"].mean() for s in seeds])
        eta = elapsed / (checkpoint + 1) * (args.num_evals - checkpoint - 1)
        line = (f"[{checkpoint + 1:>4}/{args.num_evals}] steps {steps:>11,} | sps {sps:>9,.0f} | "
                f"eval return {returns.mean():9.3f} ± {returns.std():7.3f}")
        if not self.env.metric_is_return:
            line += f" | {self.env.metric_name} {metric.mean():6.3f} ± {metric.std():6.3f}"
        for key, label in self.columns.items():
            if key in by_seed[seeds[0]]:
                column = np.array([by_seed[s][key] for s in seeds])
                line += f" | {label} {column.mean():9.3f}"
        if diverged:
            line += f" | diverged {len(diverged)}/{args.num_seeds}"
        line += f" | elapsed {fmt_time(elapsed)} | eta {fmt_time(eta)}"
        print(line, flush=True)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.writelines(json.dumps({**marked, "seed_index": s, **self.tags.get(s, {})}) + "\n" for s in diverged)
            for s in seeds:
                m = by_seed[s]
                row = {"checkpoint": checkpoint, "step": steps, "seed_index": s, "seed": args.seed, **self.tags.get(s, {}),
                       "eval/episode_return": float(m["eval/episode_return"].mean()),
                       "eval/episode_metric": float(m["eval/episode_metric"].mean()),
                       "eval/episode_returns": m["eval/episode_return"].tolist(),
                       **{k: float(v) for k, v in m.items() if not k.startswith("eval/")}}
                f.write(json.dumps(row) + "\n")
        for s in seeds:
            entry = self.seed_entry(s)
            entry[f"step_{checkpoint}"] = {
                "step_count": steps,
                "episode_return": by_seed[s]["eval/episode_return"].tolist(),
                self.env.metric_name: by_seed[s]["eval/episode_metric"].tolist(),
            }
        self.mark_marl_eval(checkpoint, steps, diverged)
        if self.wandb is not None:
            self.log_wandb(steps, by_seed, sps)

    def log_wandb(self, steps, by_seed, sps):
        """Each seed's checkpoint to its own wandb run: the evaluation return and task metric, the
        training episodes' return as train/episode_return, the losses; a diverged seed logs only that."""
        for s, m in by_seed.items():
            if s in self.diverged:
                self.wandb[s].log({"diverged": 1}, step=steps)
                continue
            log = {"eval/episode_return": float(m["eval/episode_return"].mean()), "sps": sps}
            if not self.env.metric_is_return:
                log[f"eval/{self.env.metric_name}"] = float(m["eval/episode_metric"].mean())
            for k, v in m.items():
                if not k.startswith("eval/"):
                    log["train/episode_return" if k == "episode_return" else k] = float(v)
            self.wandb[s].log(log, step=steps)

    def mark_marl_eval(self, checkpoint, steps, diverged):
        """marl_eval.json with this checkpoint's entry of each diverged seed marked, no numbers; written."""
        for s in diverged:
            entry = self.seed_entry(s)
            entry[f"step_{checkpoint}"] = {"step_count": steps, "diverged": True}
        self.write_marl_eval()

    def finish(self, results):
        """The absolute metric per seed, after the compiled run returns."""
        abs_returns = np.asarray(results["absolute/episode_return"])
        abs_metrics = np.asarray(results["absolute/episode_metric"])
        for s in range(self.args.num_seeds):
            entry = self.seed_entry(s)
            entry["absolute_metrics"] = {"episode_return": abs_returns[s].tolist(),
                                         self.env.metric_name: abs_metrics[s].tolist()}
        self.write_marl_eval()
        summary = {"absolute/episode_return": abs_returns.mean(1).tolist(),
                   "absolute/episode_metric": abs_metrics.mean(1).tolist()}
        if self.diverged:  # their absolute metric is their best checkpoint before diverging (keep_best)
            summary["diverged"] = {str(s): {"checkpoint": c, "metrics": bad} for s, (c, bad) in self.diverged.items()}
        (self.run_dir / "absolute_metric.json").write_text(json.dumps(summary, indent=1))
        per_seed_r, per_seed_m = abs_returns.mean(1), abs_metrics.mean(1)
        line = f"absolute metric (best checkpoint, {abs_returns.shape[1]} episodes): return " \
               f"{per_seed_r.mean():.3f} ± {per_seed_r.std():.3f}"
        if not self.env.metric_is_return:
            line += f", {self.env.metric_name} {per_seed_m.mean():.3f} ± {per_seed_m.std():.3f}"
        print(line, flush=True)
        if self.wandb is not None:  # each seed's own absolute metric
            for s, run in enumerate(self.wandb):
                run.summary["absolute/episode_return"] = float(per_seed_r[s])
                if not self.env.metric_is_return:
                    run.summary[f"absolute/{self.env.metric_name}"] = float(per_seed_m[s])

    def divergence_summary(self) -> str | None:
        """One line naming the diverged seeds, or None."""
        if not self.diverged:
            return None
        where = ", ".join(f"seed {s} at checkpoint {c + 1} ({bad[0]})" for s, (c, bad) in sorted(self.diverged.items()))
        return (f"{len(self.diverged)} of {self.args.num_seeds} seeds diverged: {where}; the results in "
                f"{self.run_dir} mark them (their absolute metric is their best checkpoint before)")

    def write_marl_eval(self):
        tmp = self.run_dir / "marl_eval.json.tmp"
        tmp.write_text(json.dumps(self.marl_eval))
        os.replace(tmp, self.run_dir / "marl_eval.json")  # atomic: a killed run leaves a valid file


def kill_point(checkpoint: int, point: str) -> None:
    """The fault tests' SIGKILL at a named point of a checkpoint's writing: RUNS_KILL_AT=<checkpoint,
    from 1>:<point>, the point one of `files` (its metrics.jsonl rows and marl_eval.json written, its
    state not), `state_tmp` (state.msgpack.tmp written, not yet renamed), `state` (all written)."""
    if os.environ.get("RUNS_KILL_AT") == f"{checkpoint + 1}:{point}":
        os.kill(os.getpid(), signal.SIGKILL)


def checkpoint_of(row: str) -> int | None:
    """A metrics.jsonl row's checkpoint; None for a row cut short by a kill."""
    try:
        return int(json.loads(row)["checkpoint"])
    except (ValueError, KeyError, TypeError):
        return None


# ==================================================================================================
# The compiled run
# ==================================================================================================
def max_abs(params) -> jax.Array:
    """The largest magnitude in a parameter tree, inside the compiled run: not finite exactly when a
    parameter is not (max propagates NaN), which is how the Reporter sees a seed diverge."""
    return jnp.max(jnp.stack([jnp.abs(x).max() for x in jax.tree_util.tree_leaves(params)]))


def checkpoint_summary(train_metrics: dict, params) -> dict:
    """One checkpoint's training metrics from those of its updates (each (updates,)): their mean, but the
    episodes summed and the first minibatch's ratio deviations (`loss/first_*`) their max; and the largest
    |parameter|, `params/max_abs`, which is not finite once a parameter is (the run diverged)."""
    summary = {k: v.sum() if k == "episodes" else v.max() if k.startswith("loss/first_") else v.mean()
               for k, v in train_metrics.items()}
    summary["params/max_abs"] = max_abs(params)
    return summary


def shard_seeds(*arrays):
    """Split the seed axis of `arrays` across the visible devices (JAX's sharding: the one compiled
    run is then partitioned by seed, each device training its share, and the progress callbacks
    still see every seed). Uses the most devices that divide the number of seeds; with one device
    the arrays stay as they are. Returns the arrays and the number of devices used."""
    devices = jax.devices()
    count = max(n for n in range(1, len(devices) + 1) if arrays[0].shape[0] % n == 0)
    if count == 1:
        return arrays, 1
    mesh = jax.sharding.Mesh(np.array(devices[:count]), ("seeds",))
    return jax.device_put(arrays, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("seeds"))), count


class Train(NamedTuple):
    """A script's training of one seed in two pieces, so that a run can go on from a saved state:
    `init(key)` -> its RunnerState before the first update; `run(runner, seed_index, first_checkpoint)`
    -> its results, training from that state through checkpoints first_checkpoint .. num_evals - 1
    (`scan_checkpoints`). `train(key, seed_index)` is a fresh run in one piece (what the tests jit)."""

    init: Callable
    run: Callable

    def __call__(self, key, seed_index):
        return self.run(self.init(key), seed_index, 0)


def mean_gradient(grad_fn, params, microbatches):
    """(performance, not the algorithm: skip on a first read) The mean of `grad_fn(params, microbatch)
    -> (grads, aux)` over the equal microbatches stacked on the leading axis of `microbatches`, one
    after another (a lax.scan), with each one's aux stacked. Every loss term being a mean over samples,
    this is the whole minibatch's gradient, in pieces whose activations can stay in cache."""

    def add(total, microbatch):
        grads, aux = grad_fn(params, microbatch)
        return jax.tree_util.tree_map(jnp.add, total, grads), aux

    total, aux = jax.lax.scan(add, jax.tree_util.tree_map(jnp.zeros_like, params), microbatches)
    count = jax.tree_util.tree_leaves(microbatches)[0].shape[0]
    return jax.tree_util.tree_map(lambda g: g / count, total), aux


def scan_checkpoints(checkpoint: Callable, runner, first_checkpoint, num_evals: int):
    """lax.scan of `checkpoint(runner, index) -> (runner, out)` over index = 0 .. num_evals - 1, the
    indices before `first_checkpoint` skipped (a resumed run starts from the state after checkpoint
    first_checkpoint - 1; their `out` is zeros). `first_checkpoint` is an input of the compiled run,
    not a constant: a fresh and a resumed run are one and the same compiled program."""

    def step(runner, index):
        def skip(runner, index):
            shapes = jax.eval_shape(checkpoint, runner, index)[1]
            return runner, jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)

        return jax.lax.cond(index < first_checkpoint, skip, checkpoint, runner, index)

    return jax.lax.scan(step, runner, jnp.arange(num_evals))


def restore_runner(reporter: Reporter, fresh):
    """(resume) The saved runner state in the structure, shapes, dtypes and device placement of a
    fresh one (`fresh`, the compiled init's output); a state of another run's shapes is an ArgError."""
    leaves, treedef = jax.tree_util.tree_flatten(fresh)
    saved = reporter.resumed_leaves
    path = reporter.run_dir / "state.msgpack"
    if len(saved) != len(leaves):
        raise ArgError(f"{path}: {len(saved)} arrays, the run's flags build {len(leaves)}")
    for i, (x, like) in enumerate(zip(saved, leaves)):
        if np.shape(x) != like.shape or np.asarray(x).dtype != like.dtype:
            raise ArgError(f"{path}: array {i} is {np.asarray(x).dtype}{list(np.shape(x))}, the run's flags build "
                           f"{like.dtype}{list(like.shape)}")
    return treedef.unflatten([jax.device_put(x, like.sharding) for x, like in zip(saved, leaves)])


def compile_and_run(train: Train, keys: jax.Array, reporter: Reporter):
    """The script's training for every seed (vmapped), compiled exactly once (the seeds split across
    the devices, `shard_seeds`) and run to the end, from the start or, under --resume, from the run's
    saved state (the same compiled program); the Reporter's clock starts after the compilation.
    Returns the results, on the host's side of block_until_ready."""
    seed_indices = jnp.arange(keys.shape[0])
    (keys, seed_indices), num_devices = shard_seeds(keys, seed_indices)
    t0 = time.time()
    runner = jax.jit(jax.vmap(train.init))(keys)
    if reporter.resumed_leaves is not None:
        runner = restore_runner(reporter, runner)
    first = jnp.int32(reporter.written)  # 0 for a fresh run
    compiled = jax.jit(jax.vmap(train.run, in_axes=(0, 0, None))).lower(runner, seed_indices, first).compile()
    on = f", seeds split across {num_devices} devices" if num_devices > 1 else ""
    at = f"; resuming after checkpoint {reporter.written}" if reporter.written else ""
    print(f"compiled in {time.time() - t0:.1f}s{on}{at}", flush=True)
    reporter.start = time.time() - reporter.elapsed_before
    with stop_on_ctrl_c(reporter):
        try:
            return jax.block_until_ready(compiled(runner, seed_indices, first))
        except Exception:  # XLA's error for the Interrupted raised in the Reporter's callback
            if not reporter.stop_requested:
                raise
    done, args = reporter.written, reporter.args
    script = json.loads((reporter.run_dir / "config.json").read_text())["algo"]
    then = (f"; resume with: python {script}.py --resume {reporter.run_dir}" if done and args.save_state
            else "; train it again to finish it")
    raise Interrupted(f"stopped by Ctrl-C after checkpoint {done} of {args.num_evals} (step "
                      f"{reporter.steps_at(done - 1) if done else 0:,}): {reporter.run_dir} holds the curve up to "
                      f"there, no absolute metric{then}") from None


@contextlib.contextmanager
def stop_on_ctrl_c(reporter: Reporter):
    """(faults) Ctrl-C during the compiled run stops it at the next checkpoint, after the one in progress
    is written; a second Ctrl-C quits at once (exit code 130). Python runs its signal handlers only when
    the main thread runs Python, which it does not while it waits for XLA, so the C-level handler's
    wakeup byte is read by a thread of ours, which asks the Reporter to stop."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    read, write = os.pipe()
    for fd in (read, write):
        os.set_blocking(fd, False)
    previous_handler = signal.signal(signal.SIGINT, lambda *_: None)  # the wakeup fd needs a Python handler
    previous_fd = signal.set_wakeup_fd(write)

    def watch():
        while True:
            select.select([read], [], [])
            pressed = os.read(read, 64)
            if b"\0" in pressed:  # the run is over
                return
            for _ in range(pressed.count(signal.SIGINT)):
                if reporter.stop_requested:
                    print("Ctrl-C again: quitting now", file=sys.stderr, flush=True)
                    os._exit(130)
                reporter.stop_requested = True
                print("Ctrl-C: stopping after the checkpoint in progress (Ctrl-C again to quit now)", file=sys.stderr,
                      flush=True)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    logger = logging.getLogger("jax._src.debugging")  # it logs a callback's exception with its traceback
    ours = lambda record: not reporter.stop_requested  # the Interrupted raised on Ctrl-C is expected: not logged
    logger.addFilter(ours)
    try:
        yield
    finally:
        logger.removeFilter(ours)
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGINT, previous_handler)
        os.write(write, b"\0")
        watcher.join()
        os.close(write)
        os.close(read)


def finish_run(args, run_dir: Path, results, reporter: Reporter, wandb_runs, algo: str, saved: str = "actors") -> None:
    """The absolute metric (Reporter.finish), the saved models under --save-model (`saved` names
    them in the message: actors, policies), and wandb's end."""
    reporter.finish(results)
    if args.save_model:
        save_models(run_dir, results)
        print(f"saved {saved} to {run_dir / 'models'}; evaluate with: python {algo}.py --eval-from {run_dir}")
    (run_dir / "state.msgpack").unlink(missing_ok=True)  # (resume) a finished run is not resumed: its state goes
    for run in wandb_runs or []:
        run.finish()
    summary = reporter.divergence_summary()
    if summary:
        raise Diverged(summary)


# ==================================================================================================
# Candidates: settings of the shape-free flags trained side by side in one compiled call (benchmarks/tune.py)
# ==================================================================================================
PER_CANDIDATE = ("lr", "gamma", "gae_lambda", "clip_eps", "ent_coef", "vf_coef", "max_grad_norm", "delta", "lam",
                 "decay_scaling_factor")  # the flags that change no array shape, where a script has them


def per_candidate_flags(args) -> tuple[str, ...]:
    """The flags of this script's `args` that a candidate may set in a compiled call (PER_CANDIDATE)."""
    return tuple(name for name in PER_CANDIDATE if hasattr(args, name))


def candidates_train(make_train: Callable, args, env: envs.MultiAgentEnv, report, names: tuple[str, ...]) -> Train:
    """A script's Train with the flags `names` as inputs of the compiled run instead of constants:
    init(key, values) and run(runner, seed_index, first_checkpoint, values), `values` a (len(names),)
    float32 array, so that vmapping over (key, values) trains candidates x seeds in one compiled call
    and one compiled program serves any values. The script is built inside the trace with those flags
    replaced by traced scalars: every use of them is arithmetic (a learning rate, a clip, a coefficient,
    Sable's decay), which takes a traced value as it takes a Python float. A run of one configuration
    does not come through here: its flags stay constants, its program and numbers what they are."""

    def build(values):
        return make_train(dataclasses.replace(args, **{n: values[i] for i, n in enumerate(names)}), env, report)

    return Train(lambda key, values: build(values).init(key),
                 lambda runner, seed_index, first_checkpoint, values: build(values).run(runner, seed_index,
                                                                                        first_checkpoint))


def train_candidates(train: Train, keys, values, seed_indices):
    """A fresh run of every lane of a `candidates_train` (to be jitted): lane i trains from keys[i] with
    the flag values values[i] and reports as seed seed_indices[i]. Returns the results, stacked over lanes."""
    runner = jax.vmap(train.init)(keys, values)
    return jax.vmap(train.run, in_axes=(0, 0, None, 0))(runner, seed_indices, 0, values)


# ==================================================================================================
# Saved models: writing and reloading
# ==================================================================================================
def save_models(run_dir: Path, results) -> None:
    """Each seed's deployed policy, results["actor"] (final) and results["best_actor"] (the best
    checkpoint), stacked over seeds: -> models/seed_<i>_final.msgpack, models/seed_<i>_best.msgpack."""
    models = run_dir / "models"
    models.mkdir(exist_ok=True)
    for which in ("actor", "best_actor"):
        params = jax.device_get(results[which])
        for s in range(jax.tree_util.tree_leaves(params)[0].shape[0]):
            one = jax.tree_util.tree_map(lambda x: x[s], params)
            name = "final" if which == "actor" else "best"
            (models / f"seed_{s}_{name}.msgpack").write_bytes(flax.serialization.to_bytes(one))


def load_params(path: Path, template, what: str = "this run's policy"):
    """A saved parameter tree (save_models' msgpack), checked leaf by leaf against `template` (the
    network the run's flags build: names and shapes; flax's `from_bytes` checks the names only, so a
    file of another task would load and fail later): a cut or foreign file, or one that does not fit,
    is an ArgError, one line naming the file and `what` it should have been."""
    try:
        state = flax.serialization.msgpack_restore(path.read_bytes())
    except Exception as error:  # msgpack's errors for a cut or foreign file have no common base
        raise ArgError(f"{path} is not a saved policy (truncated or another format: {type(error).__name__})") from None
    saved = dict(_named_leaves(state)) if isinstance(state, dict) else {}
    for name, leaf in _named_leaves(flax.serialization.to_state_dict(template)):
        if name not in saved:
            raise ArgError(f"{path} does not fit {what}: it has no {name}")
        have, want = np.shape(saved.pop(name)), np.shape(leaf)
        if have != want:
            raise ArgError(f"{path} does not fit {what}: {name} has shape {have}, expected {want} "
                           f"(another task or network size?)")
    if saved:
        raise ArgError(f"{path} does not fit {what}: unexpected {next(iter(saved))}")
    return flax.serialization.from_state_dict(template, state)


def _named_leaves(tree: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        out += _named_leaves(value, name) if isinstance(value, dict) else [(name, value)]
    return out


def evaluate_saved(args, args_type: type, algo: str, load_policy: Callable) -> None:
    """--eval-from: reload the policies saved by a run (--save-model) and evaluate each best
    checkpoint on args.num_eval_episodes, one line per seed.

    `load_policy(saved_args, env) -> (evaluate, template)` is the script's part: `evaluate(params,
    key, num_episodes) -> (returns, metrics)` and a parameter tree of the saved policy's structure
    (what flax.serialization fills in)."""
    run_dir = Path(args.eval_from)
    config_path = run_dir / "config.json"
    if not config_path.is_file() or not (run_dir / "models").is_dir():
        raise ArgError(f"{run_dir} is not a run folder saved with --save-model (no config.json or models/)")
    config = json.loads(config_path.read_text())
    if config.get("algo") != algo:
        raise ArgError(f"{run_dir} was trained by {config.get('algo')}.py, not {algo}.py")
    fields = {f.name for f in dataclasses.fields(args_type)}
    saved = args_type(**{k: v for k, v in config["args"].items() if k in fields})
    saved = dataclasses.replace(saved, num_eval_episodes=args.num_eval_episodes, greedy_eval=args.greedy_eval)
    env = envs.make(saved.env_id)
    evaluate, template = load_policy(saved, env)
    for path in sorted((run_dir / "models").glob("seed_*_best.msgpack")):
        params = load_params(path, template, f"{algo}'s policy for {saved.env_id}")
        returns, metrics = evaluate(params, jax.random.PRNGKey(args.seed), args.num_eval_episodes)
        line = f"{path.name}: {saved.env_id} return {float(returns.mean()):.3f} ± {float(returns.std()):.3f}"
        if not env.metric_is_return:
            line += f", {env.metric_name} {float(metrics.mean()):.3f}"
        print(line + f" over {args.num_eval_episodes} episodes", flush=True)
