"""Tune a method's hyperparameters on a task as the paper did (Optuna's TPE, App. C.3), with the
candidates of each batch trained side by side in one compiled call.

    python benchmarks/tune.py --method magpo --env-id coordsum-3x10 --n-trials 40 --batch 8 \\
        --extra "--preset paper --total-timesteps 1048576 --num-envs 64 --num-evals 16"
    python benchmarks/tune.py --method mappo --env-id rware-tiny-4ag --space "lr=1e-4,5e-4 clip_eps=0.1,0.2"

The search space is the paper's for the method (`SPACES`: Table 7 for MAGPO, δ and λ on top of the
base configuration; Tables 4-6 for MAT, Sable and IPPO / MAPPO), or `--space`. The base
configuration is the script's, with the flags of `--extra` (`--preset paper` for the paper's tuned
values of the guider's CTCE method, as the paper tunes MAGPO). Each batch asks TPE for `--batch`
trials (its constant liar keeps the trials of one batch apart), groups them by the flags that change
array shapes (epochs, minibatches, widths, blocks, chunks: one compiled call per group) and trains
each group's candidates x `--num-seeds` seeds in one compiled call (`runs.candidates_train`: the
flags that change no shape are inputs of the compiled program, which is compiled once per group
shape and reused by every later batch). A trial's value is `--objective`: `mean`, the evaluation
return averaged over every checkpoint (the area under the learning curve; the default, since the
paper does not say which it used and the best checkpoint of one short run is a noisy maximum), or
`absolute`, the paper's absolute metric (the best checkpoint re-evaluated on 10x the episodes). All
seeds of a trial start from the same keys as the trial's others (seed i: fold_in(PRNGKey(--seed), i)),
so candidates are compared on common random numbers.

The study lives in `--storage` (default: an SQLite file `study.db` in the tuning folder), loaded if
it exists: a killed tuning run resumes with the same command, keeps every finished trial, and trains
again the trials that were running when it was killed (asked again with their settings). Any
Optuna storage URL works: with a database server (`postgresql://...`, `mysql://...`) several machines
tune one study together, each with its own --out-dir. Per compiled call the folder gets
`calls/<n>/` (`config.json`, `metrics.jsonl` rows tagged with their trial and its settings,
`marl_eval.json`); `trials.jsonl` has one line per finished trial. At the end the best trial is
printed as the command line that trains it; `--plot` draws the trials' values against each flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import shlex
import signal
import socket
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import envs  # noqa: E402
import runs  # noqa: E402
from reproduce import METHODS  # noqa: E402

# The paper's search spaces (App. C.3, Tables 4-7), as flags of our scripts.
_CTCE = {"ppo_epochs": [2, 5, 10, 15], "num_minibatches": [1, 2, 4, 8], "ent_coef": [0.1, 0.01, 0.001, 1.0],
         "clip_eps": [0.05, 0.1, 0.2], "max_grad_norm": [0.5, 5.0, 10.0], "lr": [1e-3, 5e-4, 2.5e-4, 1e-4, 1e-5],
         "embed_dim": [32, 64, 128], "n_head": [1, 2, 4], "n_block": [1, 2, 3]}
SPACES: dict[str, dict[str, list]] = {
    "magpo": {"delta": [1.1, 1.2, 1.3, 1.5, 2.0, 3.0], "lam": [0.0, 1.0, 2.0, 4.0, 8.0]},  # Table 7
    "magpo_mat": {"delta": [1.1, 1.2, 1.3, 1.5, 2.0, 3.0], "lam": [0.0, 1.0, 2.0, 4.0, 8.0]},
    "mat": _CTCE,  # Table 4
    "sable": {**_CTCE, "decay_scaling_factor": [0.3, 0.5, 0.8, 1.0]},  # Table 5
    # Not in the paper: CTDS's teacher is Sable, so Table 5
    "ctds": {**_CTCE, "decay_scaling_factor": [0.3, 0.5, 0.8, 1.0]},
    # Table 6; its two learning rates (value, policy) are our one --lr
    "mappo": {"ppo_epochs": [2, 4, 8], "num_minibatches": [2, 4, 8], "ent_coef": [0.0, 0.01, 0.00001],
              "clip_eps": [0.05, 0.1, 0.2], "max_grad_norm": [0.5, 5.0, 10.0], "lr": [1e-4, 2.5e-4, 5e-4],
              "recurrent_chunk_size": [8, 16, 32, 64, 128]},
}
SPACES["ippo"] = SPACES["mappo"]
# Flags the driver sets itself, so --extra may not.
OWN_FLAGS = {"env-id", "num-seeds", "seed", "ctce", "out-dir", "run-name", "eval-from", "resume", "track",
             "save-model", "save-state"}


class TuneError(ValueError):
    """A bad option of the driver: one line on stderr, exit code 2."""


class Relay:
    """The progress callback compiled into a program, pointing at the Reporter of the call in progress
    (one compiled program serves every batch of its group's shape)."""

    target = None

    def __call__(self, *args):
        return self.target(*args)


def parse_space(text: str, args) -> dict[str, list]:
    """`--space "delta=1.1,1.5 lam=0,2"` -> {"delta": [1.1, 1.5], "lam": [0.0, 2.0]}, typed as the flag."""
    space = {}
    for item in text.split():
        name, _, values = item.partition("=")
        name = name.replace("-", "_")
        if not hasattr(args, name) or not values:
            raise TuneError(f"--space: {item!r} is not <flag>=<v1>,<v2>,... of a flag of this script")
        kind = type(getattr(args, name)) if getattr(args, name) is not None else int
        try:
            space[name] = [kind(v) for v in values.split(",")]
        except ValueError:
            raise TuneError(f"--space: {item!r}: the values of --{name.replace('_', '-')} are {kind.__name__}s") from None
    return space


def parse_options(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True, choices=list(METHODS), help=f"any of: {' '.join(METHODS)}")
    parser.add_argument("--env-id", required=True, help="the task, e.g. coordsum-3x10")
    parser.add_argument("--n-trials", type=int, default=40, help="finished trials the study should hold (the paper: 40)")
    parser.add_argument("--batch", type=int, default=8, help="trials asked and trained together per batch")
    parser.add_argument("--num-seeds", type=int, default=1, help="seeds per trial")
    parser.add_argument("--seed", type=int, default=0, help="base seed of every trial's seeds")
    parser.add_argument("--objective", choices=["mean", "absolute"], default="mean")
    parser.add_argument("--space", default="", help='"flag=v1,v2 flag=..." instead of the paper\'s space')
    parser.add_argument("--extra", default="", help='flags of the base configuration, e.g. "--preset paper"')
    parser.add_argument("--out-dir", default=None, help="the tuning folder (default runs/tune/<env-id>__<method>)")
    parser.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///<out-dir>/study.db)")
    parser.add_argument("--study-name", default=None, help="default <env-id>__<method>")
    parser.add_argument("--sampler-seed", type=int, default=0, help="TPE's seed")
    parser.add_argument("--plot", default=None, help="also draw the trials' values against each flag to this file")
    opts = parser.parse_args(argv)
    if opts.env_id not in envs.ENV_IDS:
        parser.error(f"unknown env id {opts.env_id!r}; valid ids: {', '.join(envs.ENV_IDS)}")
    for name in ("n_trials", "batch", "num_seeds"):
        if getattr(opts, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    owned = {t[2:].split("=")[0].replace("_", "-") for t in shlex.split(opts.extra) if t.startswith("--")} & OWN_FLAGS
    if owned:
        parser.error(f"--extra may not set {', '.join(sorted('--' + f for f in owned))}: the driver sets them")
    opts.study_name = opts.study_name or f"{opts.env_id}__{opts.method}"
    opts.out_dir = Path(opts.out_dir or Path("runs") / "tune" / opts.study_name)
    opts.storage = opts.storage or f"sqlite:///{(opts.out_dir / 'study.db').resolve()}"
    return opts


def base_args(module, opts):
    """The script's Args for the base configuration: its defaults, --extra, the method's flags."""
    flags = ["--env-id", opts.env_id, *METHODS[opts.method][1], *shlex.split(opts.extra)]
    args = module.parse_args(flags + ["--num-seeds", str(opts.num_seeds), "--seed", str(opts.seed)])
    return dataclasses.replace(args, save_state=False, out_dir=str(opts.out_dir / "calls"), track=False)


def trial_args(module, base, params: dict):
    """The base configuration with a trial's settings, checked as the script checks its flags."""
    args = dataclasses.replace(base, **params)
    module.check_args(args)
    return args


def settings_key(params: dict) -> tuple:
    return tuple(sorted(params.items()))


def command_line(opts, params: dict) -> str:
    script = METHODS[opts.method][0]
    flags = [*METHODS[opts.method][1], *shlex.split(opts.extra)]
    for name, value in params.items():
        flags += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join(["python", f"{script}.py", "--env-id", opts.env_id, *flags])


class Tuner:
    def __init__(self, opts):
        import optuna

        self.optuna, self.opts = optuna, opts
        self.script = METHODS[opts.method][0]
        self.module = importlib.import_module(self.script)
        self.base = base_args(self.module, opts)
        self.module.check_args(self.base)
        self.space = parse_space(opts.space, self.base) if opts.space else SPACES[opts.method]
        self.env = envs.make(opts.env_id)
        self.compiled: dict[tuple, tuple] = {}  # (shape flags, lanes) -> (compiled program, its Relay)
        opts.out_dir.mkdir(parents=True, exist_ok=True)
        (opts.out_dir / "calls").mkdir(exist_ok=True)
        self.worker = f"{socket.gethostname()}:{opts.out_dir.resolve()}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=opts.sampler_seed, constant_liar=True)
        self.study = optuna.create_study(study_name=opts.study_name, storage=opts.storage, direction="maximize",
                                         sampler=sampler, load_if_exists=True)
        # The settings every trial shares: a study continues only with the same ones, since its values
        # (and the repeats told from them) hold for those alone.
        base = json.dumps({"method": opts.method, "env_id": opts.env_id, "extra": shlex.split(opts.extra),
                           "num_seeds": opts.num_seeds, "seed": opts.seed, "objective": opts.objective})
        if self.study.user_attrs.get("base", base) != base:
            raise TuneError(f"study {opts.study_name} in {opts.storage} was run with other settings "
                            f"({self.study.user_attrs['base']}): choose another --study-name or --storage")
        self.study.set_user_attr("base", base)
        self.start = time.time()

    def requeue_killed(self) -> int:
        """This worker's trials left running by a killed tuning run: failed, and asked again with the same
        settings (Optuna's enqueue), so that they are trained again and no finished trial is."""
        running = self.study.get_trials(deepcopy=False, states=(self.optuna.trial.TrialState.RUNNING,))
        mine = [t for t in running if t.user_attrs.get("worker") == self.worker]
        for t in mine:
            self.study.tell(t.number, state=self.optuna.trial.TrialState.FAIL)
            self.study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number})
        return len(mine)

    def finished(self) -> list:
        return self.study.get_trials(deepcopy=False, states=(self.optuna.trial.TrialState.COMPLETE,))

    def ask(self, count: int) -> list[tuple]:
        """`count` trials with their Args; a setting the script refuses fails its trial with the reason."""
        asked, refused = [], 0
        while len(asked) < count:
            trial = self.study.ask()
            trial.set_user_attr("worker", self.worker)
            params = {name: trial.suggest_categorical(name, values) for name, values in self.space.items()}
            try:
                asked.append((trial, params, trial_args(self.module, self.base, params)))
            except runs.ArgError as error:
                print(f"trial {trial.number}: {error}: not trained", flush=True)
                trial.set_user_attr("refused", str(error))
                self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
                refused += 1
                if refused >= 100:
                    raise TuneError(f"100 trials in a row refused by {self.script}.py (the last: {error}): "
                                    f"the space holds no setting it accepts") from None
        return asked

    def program(self, args, lanes: int):
        """The compiled call of `lanes` candidate-seed lanes for the shapes of `args`, compiled once."""
        names = runs.per_candidate_flags(args)
        shape = tuple((k, v) for k, v in sorted(dataclasses.asdict(args).items()) if k not in names)
        if (shape, lanes) not in self.compiled:
            relay = Relay()
            train = runs.candidates_train(self.module.make_train, args, self.env, relay, names)
            call = lambda keys, values, seed_indices: runs.train_candidates(train, keys, values, seed_indices)
            t0 = time.time()
            example = (jnp.zeros((lanes, 2), jnp.uint32), jnp.zeros((lanes, len(names)), jnp.float32),
                       jnp.arange(lanes))
            self.compiled[shape, lanes] = (jax.jit(call).lower(*example).compile(), relay)
            print(f"compiled a call of {lanes} lanes in {time.time() - t0:.1f}s", flush=True)
        return self.compiled[shape, lanes], names

    def train_group(self, group: list[tuple], call_index: int) -> dict[int, float]:
        """One compiled call: every trial of `group` (the same shape flags) x --num-seeds seeds."""
        S = self.opts.num_seeds
        lanes = len(group) * S
        args = dataclasses.replace(group[0][2], num_seeds=lanes)
        (program, relay), names = self.program(args, lanes)
        values = jnp.asarray([[float(getattr(a, n)) for n in names] for _, _, a in group for _ in range(S)],
                             jnp.float32)
        seed_keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(self.opts.seed), i))(jnp.arange(S))
        keys = jnp.tile(seed_keys, (len(group), 1))  # lane c * S + s: trial c, seed s (common random numbers)
        run_dir = runs.make_run_dir(dataclasses.replace(args, run_name=f"{call_index:03d}"), self.opts.method)
        config = {"algo": self.script, "system": self.opts.method, "args": dataclasses.asdict(args),
                  "env": repr(self.env), "per_candidate": list(names),
                  "lanes": [{"trial": t.number, "seed_index": s, "params": p} for t, p, _ in group for s in range(S)]}
        (run_dir / "config.json").write_text(json.dumps(config, indent=1))
        tags = {c * S + s: {"trial": t.number, "trial_seed_index": s, "params": p}
                for c, (t, p, _) in enumerate(group) for s in range(S)}
        relay.target = runs.Reporter(args, self.env, run_dir, None, system=self.opts.method, tags=tags)
        print(f"call {call_index}: trials {', '.join(str(t.number) for t, _, _ in group)} x {S} seeds -> {run_dir}",
              flush=True)
        results = jax.block_until_ready(program(keys, values, jnp.arange(lanes)))
        relay.target.finish(results)
        kill_point("call", call_index)
        history = np.asarray(results["history"]["eval/episode_return"]).mean(axis=(1, 2))  # (lanes,)
        absolute = np.asarray(results["absolute/episode_return"]).mean(axis=1)
        scores = {}
        for c, (trial, params, _) in enumerate(group):
            lane = slice(c * S, (c + 1) * S)
            mean, best = float(history[lane].mean()), float(absolute[lane].mean())
            value = mean if self.opts.objective == "mean" else best
            trial.set_user_attr("mean_return", mean)
            trial.set_user_attr("absolute_metric", best)
            trial.set_user_attr("call", run_dir.name)
            if np.isfinite(value):
                self.study.tell(trial, value)
                scores[trial.number] = value
            else:  # a diverged seed: no value to learn from
                self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
            with open(self.opts.out_dir / "trials.jsonl", "a") as f:
                f.write(json.dumps({"trial": trial.number, "params": params, "value": value, "mean_return": mean,
                                    "absolute_metric": best, "call": run_dir.name}) + "\n")
        return scores

    def tell_repeats(self, repeats: list[tuple]) -> None:
        """Each trial whose settings a finished trial has: that trial's value, `same_as` naming it (failed if
        the first one failed: its seeds diverged)."""
        finished = {}
        for t in self.finished():  # the trial that trained each setting (the first with it)
            finished.setdefault(settings_key(t.params), t)
        for trial, params, _ in repeats:
            source = finished.get(settings_key(params))
            if source is None:
                self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
                continue
            for name in ("mean_return", "absolute_metric", "call"):
                trial.set_user_attr(name, source.user_attrs[name])
            trial.set_user_attr("same_as", source.number)
            self.study.tell(trial, source.value)
            with open(self.opts.out_dir / "trials.jsonl", "a") as f:
                f.write(json.dumps({"trial": trial.number, "params": params, "value": source.value,
                                    "mean_return": source.user_attrs["mean_return"],
                                    "absolute_metric": source.user_attrs["absolute_metric"],
                                    "call": source.user_attrs["call"], "same_as": source.number}) + "\n")

    def best_so_far(self) -> str:
        if not self.finished():
            return "no finished trial yet"
        best = self.study.best_trial
        return f"best {best.value:.3f} (trial {best.number}: {' '.join(f'{k}={v}' for k, v in best.params.items())})"

    def run(self) -> None:
        opts = self.opts
        requeued = self.requeue_killed()
        done = len(self.finished())
        print(f"tuning {opts.method} on {opts.env_id}: {done} of {opts.n_trials} trials finished"
              + (f", {requeued} killed ones asked again" if requeued else "")
              + f" | space {' '.join(f'{k}={v}' for k, v in self.space.items())} | study {opts.storage}", flush=True)
        call_index = len(list((opts.out_dir / "calls").iterdir()))
        batch = 0
        while done < opts.n_trials:
            batch += 1
            asked = self.ask(min(opts.batch, opts.n_trials - done))
            kill_point("asked", batch)
            # A setting trained before (TPE repeats the good ones) gives the same value again: the seeds'
            # keys are the same in every trial, so it is told that value instead of being trained twice.
            known = {settings_key(t.params) for t in self.finished()}
            fresh, repeats = {}, []
            for item in asked:
                key = settings_key(item[1])
                if key in known or key in fresh:
                    repeats.append(item)
                else:
                    fresh[key] = item
            groups: dict[tuple, list] = {}
            for item in fresh.values():
                names = runs.per_candidate_flags(item[2])
                groups.setdefault(tuple(v for k, v in item[1].items() if k not in names), []).append(item)
            for group in groups.values():
                self.train_group(group, call_index)
                call_index += 1
            self.tell_repeats(repeats)
            done, elapsed = len(self.finished()), runs.fmt_time(time.time() - self.start)
            print(f"batch {batch}: {done}/{opts.n_trials} trials | {self.best_so_far()} | elapsed {elapsed}", flush=True)
        best = self.study.best_trial
        print(f"best of {done} trials: {opts.objective} {best.value:.3f} (trial {best.number}); train it with:\n"
              f"{command_line(opts, best.params)}", flush=True)
        if opts.plot:
            plot_trials(self.finished(), self.space, opts.plot, f"{opts.method} on {opts.env_id} ({opts.objective})")


def plot_trials(trials: list, space: dict, path: str, title: str) -> None:
    """One panel per tuned flag: each finished trial's value against its setting of that flag."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(space)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.0), squeeze=False)
    values = np.array([t.value for t in trials])
    for ax, name in zip(axes[0], names):
        choices = space[name]
        x = np.array([choices.index(t.params[name]) for t in trials], float)
        jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(x))
        ax.scatter(x + jitter, values, s=14, alpha=0.7)
        ax.set_xticks(range(len(choices)), [str(c) for c in choices])
        ax.set_xlabel(name)
    axes[0][0].set_ylabel("trial value")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plotted {len(trials)} trials to {path}", flush=True)


def kill_point(point: str, index: int) -> None:
    """The tests' SIGKILL: TUNE_KILL_AT=asked:<batch> (its trials asked, none trained) or call:<n>
    (call n trained and written, its trials not yet told)."""
    if os.environ.get("TUNE_KILL_AT") == f"{point}:{index}":
        os.kill(os.getpid(), signal.SIGKILL)


def main(argv=None) -> int:
    try:
        opts = parse_options(argv)
        Tuner(opts).run()
    except (TuneError, runs.ArgError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
