"""The paper's protocol for some tasks and methods: one training run per (task, method), one after another.

    python benchmarks/reproduce.py --env-ids coordsum-3x10 rware-tiny-4ag --methods magpo ctds mappo ippo sable mat
    python benchmarks/reproduce.py --env-ids coordsum-3x10 --methods mappo --num-seeds 2 \\
        --total-timesteps 65536 --num-evals 2 --extra "--num-envs 16 --rollout-length 64"
    python benchmarks/reproduce.py --env-ids smax-3s5z --methods magpo mappo --dry-run   # commands only

The defaults are the paper's protocol: 10 seeds (trained together in one compiled call of the
script), 20M steps per seed, 122 evaluations of 32 episodes, then the absolute metric. Each method is
one of the algorithm scripts:

    magpo -> magpo_sable.py          sable -> magpo_sable.py --ctce     ctds  -> ctds.py
    mat   -> magpo_mat.py --ctce     magpo_mat -> magpo_mat.py          mappo -> mappo.py, ippo -> ippo.py

with `--preset paper` wherever paper_params.csv has the configuration (the script's own
`apply_preset` decides, so the driver and the script never disagree), and the script's defaults
otherwise (said so on the console). `--extra` adds flags to every run; they win over the preset.

Each run writes to `<out-dir>/<env-id>__<method>__<budget>/` (budget: the steps per seed, `20M`).
A folder that already holds `absolute_metric.json` is a finished run: skipped, provided it was
trained with the same settings (otherwise an error: choose another --out-dir). A folder without it
but with the state of its last checkpoint (`state.msgpack`) is a killed run: the driver resumes it
(`--resume`; the same settings checked). A folder with neither was killed before its first
checkpoint (or is still running in another shell): the driver leaves it alone and reports an error
for that run, since the scripts never overwrite a folder; move or delete it to train that run
again. A run that fails is reported and the others still run; the exit code
is non-zero if any run failed or was refused. Commands are shown with `python` for the interpreter
that runs this driver.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import envs  # noqa: E402
import runs  # noqa: E402

# method -> (script module, flags that select the method within it)
METHODS: dict[str, tuple[str, list[str]]] = {
    "magpo": ("magpo_sable", []),
    "sable": ("magpo_sable", ["--ctce"]),
    "mat": ("magpo_mat", ["--ctce"]),
    "magpo_mat": ("magpo_mat", []),
    "ctds": ("ctds", []),
    "mappo": ("mappo", []),
    "ippo": ("ippo", []),
}
# Flags the driver sets itself, so --extra may not.
OWN_FLAGS = {"env-id", "num-seeds", "total-timesteps", "num-evals", "preset", "ctce", "out-dir", "run-name", "eval-from",
             "resume"}
# Settings that do not change what a run computes: not compared when a finished run is reused.
NOT_COMPARED = runs.OUTPUT_FLAGS


@dataclasses.dataclass
class Run:
    env_id: str
    method: str
    name: str
    command: list[str]
    preset: bool = False
    preset_values: dict = dataclasses.field(default_factory=dict)  # what --preset paper changes
    no_preset: str = ""  # why there is no preset (the script's words)
    finished: bool = False  # a finished run of the same settings is already there: skip
    resuming: bool = False  # a killed run of the same settings with its state: --resume it
    error: str | None = None  # refused before starting (bad flags, a killed run's folder, ...)


def budget_tag(steps: int) -> str:
    """20_000_000 -> '20M', 500_000 -> '500k', 65_536 -> '65536'."""
    for unit, size in (("M", 10**6), ("k", 10**3)):
        if steps >= size and steps % size == 0:
            return f"{steps // size}{unit}"
    return str(steps)


def fmt_values(values: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items()) or "the defaults"


def settings_differ(wanted, config_path: Path) -> list[str]:
    """The flags whose values differ between `wanted` (a script's Args) and a saved run's config.json.
    Flags only one side knows (a flag added to the script since) are not compared."""
    try:
        saved = json.loads(config_path.read_text())["args"]
    except (OSError, ValueError, KeyError):
        return ["(no readable config.json)"]
    wanted = json.loads(json.dumps(dataclasses.asdict(wanted)))  # tuples -> lists, as saved
    return sorted(k for k in wanted.keys() & saved.keys() if k not in NOT_COMPARED and wanted[k] != saved[k])


def plan_run(env_id: str, method: str, opts: argparse.Namespace) -> Run:
    script, method_flags = METHODS[method]
    module = importlib.import_module(script)
    flags = ["--env-id", env_id, *method_flags, "--num-seeds", str(opts.num_seeds),
             "--total-timesteps", str(opts.total_timesteps), "--num-evals", str(opts.num_evals),
             *shlex.split(opts.extra)]
    name = f"{env_id}__{method}__{budget_tag(opts.total_timesteps)}"
    command = ["python", os.path.relpath(ROOT / f"{script}.py"), *flags]
    run = Run(env_id, method, name, command)
    try:
        args = plain = module.parse_args(flags)  # the flags alone must be valid, or the preset's failure would hide it
    except runs.ArgError as error:
        run.error = f"invalid flags for {script}.py: {error}"
        return run
    try:  # the script's own lookup: an error here means the paper lists no configuration
        args = module.parse_args(flags + ["--preset", "paper"])
        run.preset = True
        run.preset_values = {k: v for k, v in dataclasses.asdict(args).items()
                             if k != "preset" and v != getattr(plain, k)}
    except runs.ArgError as error:
        run.no_preset = str(error).split(";")[0]  # "the paper lists no mappo configuration for <id>"
    try:
        module.check_args(args)
    except runs.ArgError as error:
        preset = f" with the paper's preset ({fmt_values(run.preset_values)}; --extra overrides it)" if run.preset else ""
        run.error = f"invalid settings for {script}.py{preset}: {error}"
        return run
    run.command += (["--preset", "paper"] if run.preset else []) + ["--out-dir", opts.out_dir, "--run-name", name]

    folder = Path(opts.out_dir) / name
    if (folder / "absolute_metric.json").is_file():
        differ = settings_differ(args, folder / "config.json")
        if differ:
            run.error = (f"{folder} holds a finished run with other settings ({', '.join(differ)}); "
                         f"choose another --out-dir to train this one")
        else:
            run.finished = True
    elif (folder / "state.msgpack").is_file():  # a killed run: go on from its last checkpoint
        differ = settings_differ(args, folder / "config.json")
        if differ:
            run.error = (f"{folder} holds a killed run with other settings ({', '.join(differ)}); "
                         f"choose another --out-dir to train this one")
        else:
            run.command = ["python", os.path.relpath(ROOT / f"{script}.py"), "--resume", str(folder)]
            run.resuming = True
    elif folder.exists():
        run.error = (f"{folder} exists without absolute_metric.json or a saved state: a run killed before its first "
                     f"checkpoint (or one still running). Move or delete it to train this run again; plot.py ignores "
                     f"unfinished runs")
    return run


def parse_options(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-ids", nargs="+", required=True, metavar="ID", help="tasks, e.g. coordsum-3x10")
    parser.add_argument("--methods", nargs="+", required=True, choices=list(METHODS), metavar="METHOD",
                        help=f"any of: {' '.join(METHODS)}")
    parser.add_argument("--num-seeds", type=int, default=10)
    parser.add_argument("--total-timesteps", type=int, default=20_000_000, help="environment steps per seed")
    parser.add_argument("--num-evals", type=int, default=122)
    parser.add_argument("--extra", default="", help='more flags for every run, e.g. "--num-envs 64"')
    parser.add_argument("--out-dir", default="runs")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    opts = parser.parse_args(argv)
    for env_id in opts.env_ids:
        if env_id not in envs.ENV_IDS:
            parser.error(f"unknown env id {env_id!r}; valid ids: {', '.join(envs.ENV_IDS)}")
    owned = {t[2:].split("=")[0].replace("_", "-") for t in shlex.split(opts.extra) if t.startswith("--")} & OWN_FLAGS
    if owned:
        parser.error(f"--extra may not set {', '.join(sorted('--' + f for f in owned))}: the driver sets them")
    return opts


def main(argv=None) -> int:
    opts = parse_options(argv)
    planned = [plan_run(env_id, method, opts) for env_id in opts.env_ids for method in opts.methods]
    failed = []
    for i, run in enumerate(planned, 1):
        head = f"[{i}/{len(planned)}] {run.name}:"
        if run.error:
            print(f"{head} ERROR: {run.error}", flush=True)
            failed.append(run)
            continue
        if run.finished:
            print(f"{head} finished already (absolute_metric.json present): skipped", flush=True)
            continue
        if run.resuming:
            print(f"{head} killed before the end: resuming it from its last checkpoint", flush=True)
        elif run.preset:
            print(f"{head} --preset paper: {fmt_values(run.preset_values)}", flush=True)
        else:
            print(f"{head} {run.no_preset}: the script's defaults", flush=True)
        print(f"{head} {shlex.join(run.command)}", flush=True)
        if opts.dry_run:
            continue
        command = [sys.executable, *run.command[1:]]
        returncode = subprocess.run(command).returncode  # output streams straight to the console
        if returncode != 0:
            print(f"{head} FAILED with exit code {returncode}", flush=True)
            failed.append(run)
    if failed:
        print(f"{len(failed)} of {len(planned)} runs failed or were refused: {', '.join(r.name for r in failed)}",
              flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
