"""Learning curves, per-family aggregates and the results table, from the run folders in runs/.

    python benchmarks/plot.py                       # runs/ -> runs/plots/*.png, runs/plots/results.md
    python benchmarks/plot.py --docs                # benchmarks/results/ -> docs/*.png, docs/results.md
    python benchmarks/plot.py --runs /tmp/runs --out /tmp/plots --table /tmp/plots/results.md
    python benchmarks/plot.py --marl-eval merged.json   # the same runs in one file for marl-eval

By default nothing under docs/ is touched: the figures and the table go to `<runs>/plots/`; `--docs`
writes the committed docs/ figures and docs/results.md instead, from the committed run folders under
`benchmarks/results/` (the result files of the runs the docs show, without models; copy a finished
run folder there to add it), unless --runs names others.

Reads every `<runs>/<run>/` that holds config.json, marl_eval.json and absolute_metric.json (a run
without absolute_metric.json was killed or is still running: listed and ignored). The method is
config.json's `system` (ippo.py and mappo.py write only `algo`, which is the same name), except that
magpo_mat.py's MAGPO is `magpo_mat`, to keep it apart from MAGPO with the Sable guider (the paper's
MAGPO). Several finished runs of one task and method: the one with the most steps per seed, then the
most seeds, then the newest is kept; the console says which.

What each score is: the task's metric as envs.py names it in marl_eval.json (`metric_name`: the
episode return, LBF's normalised return, the win rate of SMAX and Connector), which is what the
paper's Table 1 reports. The final score of a seed is its absolute metric (absolute_metric.json:
the best checkpoint re-evaluated on 320 episodes).

Writes:
- `<out>/curve_<env-id>.png`: evaluation return (and the task metric where it is not the return)
  against environment steps per seed, one line per method: the mean over seeds with a 95% bootstrap
  confidence interval, seeds being the unit resampled (the paper's Fig. 6);
- `<out>/aggregate_<family>.png`, for each family (only the tasks that every method measured there):
  each task's scores min-max normalised by the lowest and highest episode value of any run on that
  task (any method, checkpoint or absolute evaluation, as marl-eval does), then (a) the IQM over
  seeds and tasks at each checkpoint (the paper's Fig. 2), (b) the IQM of the absolute metric, and
  (c) the probability that MAGPO improves on each other method (Fig. 3), all with 95% stratified
  bootstrap confidence intervals (rliable: seeds resampled within each task);
- `--table`: the markdown table of ours (mean ± std over seeds of the absolute metric, numpy's std)
  beside the paper's Table 1 (benchmarks/paper_table1.csv), with the budget of each run. A cell whose
  mean, rounded as the paper rounds, lies below the paper's mean by more than the paper's std is
  marked "⚠ open"; then the per-family aggregates in numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.stats  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import EngFormatter  # noqa: E402
from rliable import library as rly  # noqa: E402
from rliable import metrics, plot_utils  # noqa: E402

PAPER_TABLE = Path(__file__).with_name("paper_table1.csv")
# Table and legend order: the paper's Table 1 columns, then the methods it has no column for.
METHODS = ["magpo", "ctds", "ippo", "mappo", "mat", "sable", "magpo_mat"]
LABELS = {"magpo": "MAGPO", "ctds": "CTDS", "ippo": "IPPO", "mappo": "MAPPO", "mat": "MAT", "sable": "Sable",
          "magpo_mat": "MAGPO-MAT"}
COLORS = dict(zip(METHODS, sns.color_palette("colorblind", len(METHODS))))
FAMILIES = ["coordsum", "lbf", "connector", "mpe", "rware", "smax"]  # the paper's Table 1 order
OPEN = "⚠ open"


@dataclass
class Run:
    path: Path
    env_id: str
    family: str
    method: str
    metric: str  # the task metric's key in marl_eval.json
    steps: np.ndarray  # (K,) environment steps per seed at each checkpoint
    returns: np.ndarray  # (S, K) mean evaluation return of each seed at each checkpoint
    scores: np.ndarray  # (S, K) the same for the task metric
    absolute: np.ndarray  # (S,) absolute metric (task metric) of each seed
    low: float  # the lowest and highest task metric of any one episode of the run: the normaliser
    high: float
    steps_per_seed: int
    num_seeds: int
    mtime: float

    @property
    def budget(self) -> str:
        return f"{fmt_steps(self.steps_per_seed)} × {self.num_seeds}"


def fmt_steps(steps: int) -> str:
    return f"{steps / 1e6:.3g}M" if steps >= 10**6 else f"{steps / 1e3:.3g}k" if steps >= 10**3 else str(steps)


# --------------------------------------------------------------------------------------------------
# Reading runs
# --------------------------------------------------------------------------------------------------
def seed_keys(by_seed: dict) -> list[str]:
    """marl_eval.json's seed keys, seed_<--seed x 10,000 + index> (runs.Reporter.seed_entry), in index order."""
    return sorted(by_seed, key=lambda k: int(k[len("seed_"):]))


# The committed result files of the runs that docs/results.md and the docs/ figures are drawn from.
RESULTS = Path(__file__).resolve().parent / "results"


def load_run(folder: Path) -> Run:
    """One finished run folder, as the scripts' Reporter and main() write it."""
    config = json.loads((folder / "config.json").read_text())
    absolute = json.loads((folder / "absolute_metric.json").read_text())
    # marl-eval's nesting, one family, task and system per run: family -> env_id -> system -> seed_i
    ((family, tasks),) = json.loads((folder / "marl_eval.json").read_text()).items()
    ((env_id, systems),) = tasks.items()
    ((_, by_seed),) = systems.items()
    # A diverged seed's later checkpoints hold no numbers (runs.Reporter): the run is scored without it.
    diverged = {int(s) for s in absolute.get("diverged", {})}
    kept = [s for s in range(len(by_seed)) if s not in diverged]
    if not kept:
        raise ValueError("every seed diverged")
    if diverged:
        print(f"{folder}: seeds {sorted(diverged)} diverged, left out")
    ordered = [by_seed[k] for k in seed_keys(by_seed)]
    seeds = [ordered[s] for s in kept]
    checkpoints = sorted((k for k in seeds[0] if k.startswith("step_")), key=lambda k: int(k[len("step_"):]))
    first = seeds[0][checkpoints[0]]
    # The Reporter writes the metric under env.metric_name, which is `episode_return` itself when
    # the task's metric is its return: then the entry has no third key.
    metric = next((k for k in first if k not in ("step_count", "episode_return")), "episode_return")
    mean_of = lambda key: np.array([[np.mean(seed[c][key]) for c in checkpoints] for seed in seeds])
    episodes = [v for seed in seeds for k in [*checkpoints, "absolute_metrics"] for v in seed[k][metric]]
    system = config.get("system", config["algo"])
    return Run(
        path=folder, env_id=env_id, family=family,
        method="magpo_mat" if config["algo"] == "magpo_mat" and system == "magpo" else system,
        metric=metric, steps=np.array([seeds[0][c]["step_count"] for c in checkpoints]),
        returns=mean_of("episode_return"), scores=mean_of(metric),
        absolute=np.array(absolute["absolute/episode_metric"])[kept],
        low=float(np.min(episodes)), high=float(np.max(episodes)),
        steps_per_seed=int(config["steps_per_seed"]), num_seeds=len(seeds),
        mtime=(folder / "absolute_metric.json").stat().st_mtime,
    )


def load_runs(runs_dir: Path) -> dict[tuple[str, str], Run]:
    """Every finished run under runs_dir -> {(env_id, method): the run kept}; says what it skipped."""
    kept: dict[tuple[str, str], Run] = {}
    for folder in sorted(p for p in runs_dir.iterdir() if (p / "config.json").is_file()):
        if not (folder / "absolute_metric.json").is_file():
            print(f"ignored {folder}: no absolute_metric.json (killed or still running)")
            continue
        try:
            run = load_run(folder)
        except (OSError, ValueError, KeyError, IndexError) as error:
            print(f"ignored {folder}: unreadable ({type(error).__name__}: {error})")
            continue
        key = (run.env_id, run.method)
        if key in kept:
            rank = lambda r: (r.steps_per_seed, r.num_seeds, r.mtime)
            keep, drop = sorted([kept[key], run], key=rank, reverse=True)
            why = "more steps" if keep.steps_per_seed != drop.steps_per_seed else \
                "more seeds" if keep.num_seeds != drop.num_seeds else "newer"
            print(f"{run.env_id} {run.method}: kept {keep.path.name} ({keep.budget}) over {drop.path.name} "
                  f"({drop.budget}): {why}")
            run = keep
        kept[key] = run
    return kept


def read_paper_table(path: Path = PAPER_TABLE) -> dict[tuple[str, str], tuple[str, str]]:
    """{(env_id, method): (mean, std)} as the paper prints them (strings: their rounding matters)."""
    with open(path) as f:
        return {(r["env_id"], r["method"]): (r["mean"], r["std"]) for r in csv.DictReader(f)}


def sort_tasks(env_ids, paper) -> list[str]:
    """Families and tasks in the paper's order; a task it does not list ends its family."""
    order = list(dict.fromkeys(env_id for env_id, _ in paper))
    family_of = lambda e: FAMILIES.index(e.split("-")[0]) if e.split("-")[0] in FAMILIES else len(FAMILIES)
    return sorted(env_ids, key=lambda e: (family_of(e), order.index(e) if e in order else len(order), e))


# --------------------------------------------------------------------------------------------------
# Statistics (rliable)
# --------------------------------------------------------------------------------------------------
def mean_and_ci_over_seeds(values: np.ndarray, reps: int) -> tuple[np.ndarray, np.ndarray]:
    """values (S, K) -> the mean over seeds at each checkpoint (K,), its 95% bootstrap CI (2, K).
    One task, so rliable's stratified bootstrap is the plain bootstrap over seeds."""
    point, interval = rly.get_interval_estimates({"run": values[:, None, :]}, lambda x: x[:, 0].mean(axis=0),
                                                 reps=reps)
    return point["run"], interval["run"]


def iqm_per_checkpoint(scores: np.ndarray) -> np.ndarray:
    """scores (S, T, K) -> the IQM over seeds and tasks at each of the K checkpoints: rliable's
    `aggregate_iqm` (scipy's 25% trimmed mean over all seeds and tasks) for all checkpoints in one
    call, which makes 122 checkpoints x thousands of resamples take seconds instead of minutes."""
    return scipy.stats.trim_mean(scores.reshape(-1, scores.shape[-1]), proportiontocut=0.25, axis=0)


@dataclass
class Aggregate:
    family: str
    tasks: list[str]
    methods: list[str]
    seeds: dict[str, int]
    iqm: dict[str, tuple[float, np.ndarray]]  # method -> (IQM, 95% CI) of the normalised absolute metric
    poi: dict[str, tuple[float, np.ndarray]]  # baseline -> (P(MAGPO > baseline), 95% CI)
    curve_steps: np.ndarray | None  # checkpoints of the IQM curves (None: the runs' grids differ)
    curves: dict[str, tuple[np.ndarray, np.ndarray]]  # method -> (IQM (K,), CI (2, K))


def aggregate(family: str, runs: dict[tuple[str, str], Run], reps: int) -> Aggregate | None:
    """Min-max normalised IQM and probability of improvement over the tasks of one family that
    every method measured there (rliable needs one seeds x tasks matrix per method)."""
    mine = {key: run for key, run in runs.items() if run.family == family}
    methods = [m for m in METHODS if any(method == m for _, method in mine)]
    tasks = sorted(set.intersection(*[{e for e, m in mine if m == method} for method in methods]))
    left_out = sorted({e for e, _ in mine} - set(tasks))
    if left_out:
        print(f"{family}: aggregates over {', '.join(tasks) or 'no task'}; not every method ran {', '.join(left_out)}")
    if not tasks:
        return None
    # marl-eval's normaliser: the extremes of any one episode on the task, over every method's run
    bounds = {e: (min(mine[e, m].low for m in methods), max(mine[e, m].high for m in methods)) for e in tasks}
    normalise = lambda e, x: (x - bounds[e][0]) / (bounds[e][1] - bounds[e][0] + 1e-6)  # marl-eval's 1e-6

    seeds = {m: min(mine[e, m].num_seeds for e in tasks) for m in methods}
    for m in methods:
        if any(mine[e, m].num_seeds > seeds[m] for e in tasks):
            print(f"{family} {m}: the first {seeds[m]} seeds of each task (its runs have different seed counts)")
    final = {m: np.stack([normalise(e, mine[e, m].absolute[:seeds[m]]) for e in tasks], axis=1) for m in methods}

    point, interval = rly.get_interval_estimates(final, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps)
    iqm = {m: (float(point[m][0]), interval[m][:, 0]) for m in methods}

    poi = {}
    if "magpo" in methods:
        pairs = {b: [final["magpo"], final[b]] for b in methods if b != "magpo"}
        point, interval = rly.get_interval_estimates(pairs, metrics.probability_of_improvement, reps=reps)
        poi = {b: (float(point[b]), np.ravel(interval[b])) for b in pairs}

    grids = {tuple(mine[e, m].steps) for e in tasks for m in methods}
    curve_steps, curves = None, {}
    if len(grids) == 1:
        curve_steps = np.array(grids.pop())
        scores = {m: np.stack([normalise(e, mine[e, m].scores[:seeds[m]]) for e in tasks], axis=1) for m in methods}
        point, interval = rly.get_interval_estimates(scores, iqm_per_checkpoint, reps=reps)
        curves = {m: (point[m], interval[m]) for m in methods}
    else:
        print(f"{family}: no IQM curve, the runs were evaluated at different steps")
    return Aggregate(family, tasks, methods, seeds, iqm, poi, curve_steps, curves)


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------
def plot_task(env_id: str, runs: list[Run], path: Path, reps: int) -> None:
    """Mean over seeds with its 95% bootstrap CI, per method: the return, and the task metric."""
    panels = [("returns", "evaluation return")]
    if runs[0].metric != "episode_return":
        panels.append(("scores", runs[0].metric.replace("_", " ")))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for ax, (field, label) in zip(axes[0], panels):
        for run in runs:
            mean, ci = mean_and_ci_over_seeds(getattr(run, field), reps)
            ax.plot(run.steps, mean, color=COLORS[run.method], label=f"{LABELS[run.method]} ({run.num_seeds} seeds)")
            ax.fill_between(run.steps, ci[0], ci[1], color=COLORS[run.method], alpha=0.2, linewidth=0)
        ax.set(xlabel="environment steps per seed", ylabel=label, title=f"{env_id}: {label}")
        ax.xaxis.set_major_formatter(EngFormatter())  # 20M, not 2.0 x 1e7
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_aggregate(agg: Aggregate, path: Path) -> None:
    """(a) IQM curve over training, (b) IQM of the absolute metric, (c) probability of improvement."""
    panels = (agg.curve_steps is not None) + 1 + bool(agg.poi)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 0.55 * len(agg.methods) + 3.2))
    axes = list(np.atleast_1d(axes))
    title = f"{agg.family}: {len(agg.tasks)} task{'s' * (len(agg.tasks) > 1)}"
    if agg.curve_steps is not None:
        ax = axes.pop(0)
        plot_utils.plot_sample_efficiency_curve(
            agg.curve_steps, {LABELS[m]: agg.curves[m][0] for m in agg.methods},
            {LABELS[m]: agg.curves[m][1] for m in agg.methods}, algorithms=[LABELS[m] for m in agg.methods],
            colors={LABELS[m]: COLORS[m] for m in agg.methods}, ax=ax, marker="",
            xlabel="environment steps per seed", ylabel="normalised IQM", labelsize="large", ticklabelsize="medium")
        ax.legend(fontsize="small")
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.set_title(f"{title}, IQM over training")
    ax = axes.pop(0)
    for i, m in enumerate(agg.methods):  # rliable's plot_interval_estimates draws its own figure: the same bars here
        value, (low, high) = agg.iqm[m]
        ax.barh(i, high - low, left=low, height=0.6, color=COLORS[m], alpha=0.75)
        ax.vlines(value, i - 0.3, i + 0.3, color="k")
    ax.set_yticks(range(len(agg.methods)), [LABELS[m] for m in agg.methods])
    ax.invert_yaxis()
    ax.set(xlabel="normalised IQM of the absolute metric (95% CI)", title=f"{title}, absolute metric")
    ax.grid(axis="x", alpha=0.3)
    if agg.poi:
        ax = axes.pop(0)
        plot_utils.plot_probability_of_improvement(
            {f"MAGPO,{LABELS[b]}": p for b, (p, _) in agg.poi.items()},
            {f"MAGPO,{LABELS[b]}": ci for b, (_, ci) in agg.poi.items()},
            ax=ax, colors=[COLORS[b] for b in agg.poi], xlabel="P(MAGPO > Y)", left_ylabel="", right_ylabel="",
            labelsize="large", ticklabelsize="medium")
        ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_title(f"{title}, probability of improvement")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------------------
def falls_short(ours: float, paper: tuple[str, str]) -> bool:
    """Below the paper's mean by more than its std, our mean rounded to the paper's decimals (its
    `1.00 ± 0.00` means a std under 0.005, not zero)."""
    mean, std = paper
    decimals = len(mean.partition(".")[2])
    return round(ours, decimals) < float(mean) - float(std)


def results_table(runs: dict[tuple[str, str], Run], paper, aggregates: list[Aggregate]) -> str:
    tasks = sort_tasks({e for e, _ in runs}, paper)
    methods = [m for m in METHODS if any(method == m for _, method in runs)]
    header = ["task", "metric"] + [f"{LABELS[m]} {side}" for m in methods for side in ("ours", "paper")] + \
        ["budget (steps per seed × seeds)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    opens = []
    for e in tasks:
        row_runs = {m: runs[e, m] for m in methods if (e, m) in runs}
        cells = [e, next(iter(row_runs.values())).metric]
        for m in methods:
            ref = paper.get((e, m))
            run = row_runs.get(m)
            if run is None:
                ours = "–"
            else:
                mean, std = float(run.absolute.mean()), float(run.absolute.std())
                ours = f"{mean:.2f} ± {std:.2f}"
                if ref and falls_short(mean, ref):
                    ours += f" {OPEN}"
                    opens.append(f"- {e}, {LABELS[m]}: ours {mean:.2f} ± {std:.2f} ({run.budget}), "
                                 f"paper {ref[0]} ± {ref[1]}")
            cells += [ours, f"{ref[0]} ± {ref[1]}" if ref else "–"]
        budgets = {r.budget for r in row_runs.values()}
        cells.append(budgets.pop() if len(budgets) == 1 else
                     "; ".join(f"{LABELS[m]} {r.budget}" for m, r in row_runs.items()))
        lines.append("| " + " | ".join(cells) + " |")

    out = ["Ours: the absolute metric, mean ± std over seeds (numpy's std); paper: its Table 1 (10 seeds, "
           "20M steps). The metric is the episode return except LBF's normalised return and the win rate of "
           f"SMAX and Connector. {OPEN}: our mean is below the paper's by more than the paper's std.", "",
           *lines, ""]
    out += ["Open questions:", "", *(opens or ["- none"]), ""]
    for agg in aggregates:
        out += [f"{agg.family} ({', '.join(agg.tasks)}), min-max normalised, 95% stratified bootstrap CIs:", "",
                "| method | seeds | IQM of the absolute metric | P(MAGPO > method) |", "|---|---|---|---|"]
        for m in agg.methods:
            value, (low, high) = agg.iqm[m]
            poi = "–"
            if m in agg.poi:
                p, (pl, ph) = agg.poi[m]
                poi = f"{p:.2f} [{pl:.2f}, {ph:.2f}]"
            out.append(f"| {LABELS[m]} | {agg.seeds[m]} | {value:.3f} [{low:.3f}, {high:.3f}] | {poi} |")
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# marl-eval export
# --------------------------------------------------------------------------------------------------
def marl_eval_export(runs: dict[tuple[str, str], Run]) -> dict:
    """The kept finished runs (those the figures use) in one marl-eval file: family -> task -> method
    -> seed_<n> -> step_<k> ..., absolute_metrics (last, where marl-eval looks for it), diverged seeds
    left out. Each seed keeps its run's key (unique across --seed values), and the methods are named
    as in the figures' legend keys (`magpo_mat` apart from `magpo`)."""
    merged: dict = {}
    for (env_id, method), run in sorted(runs.items()):
        ((family, tasks),) = json.loads((run.path / "marl_eval.json").read_text()).items()
        ((_, by_seed),) = tasks[env_id].items()
        absolute = json.loads((run.path / "absolute_metric.json").read_text())
        diverged = {int(s) for s in absolute.get("diverged", {})}
        keys = seed_keys(by_seed)
        seeds = merged.setdefault(family, {}).setdefault(env_id, {}).setdefault(method, {})
        for index, key in enumerate(keys):
            if index in diverged:
                continue
            steps = sorted((k for k in by_seed[key] if k.startswith("step_")), key=lambda k: int(k[len("step_"):]))
            seeds[key] = {**{k: by_seed[key][k] for k in steps}, "absolute_metrics": by_seed[key]["absolute_metrics"]}
    return merged


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, help="folder of run folders (default: runs/; with --docs benchmarks/results/)")
    parser.add_argument("--out", type=Path, help="where the PNGs go (default: <runs>/plots)")
    parser.add_argument("--table", type=Path, help="the markdown table (default: <out>/results.md)")
    parser.add_argument("--docs", action="store_true", help="write docs/*.png and docs/results.md (the committed ones)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples for every CI")
    parser.add_argument("--marl-eval", type=Path, metavar="FILE",
                        help="instead of the figures, merge the kept finished runs into one marl-eval file")
    opts = parser.parse_args(argv)
    if opts.docs and (opts.out or opts.table):
        parser.error("--docs chooses --out and --table itself")
    docs = Path(__file__).resolve().parents[1] / "docs"
    opts.runs = opts.runs or (RESULTS if opts.docs else Path("runs"))
    opts.out = opts.out or (docs if opts.docs else opts.runs / "plots")
    opts.table = opts.table or opts.out / "results.md"
    if not opts.runs.is_dir():
        parser.error(f"{opts.runs} is not a folder")
    # rliable draws its resamples from numpy's global generator: seeded, the figures are reproducible
    np.random.seed(0)
    runs = load_runs(opts.runs)
    if not runs:
        parser.error(f"no finished run under {opts.runs}")
    if opts.marl_eval:
        opts.marl_eval.parent.mkdir(parents=True, exist_ok=True)
        opts.marl_eval.write_text(json.dumps(marl_eval_export(runs)))
        print(f"{opts.marl_eval}: {', '.join(f'{e} {m}' for e, m in sorted(runs))}")
        return
    opts.out.mkdir(parents=True, exist_ok=True)
    paper = read_paper_table()

    for e in sort_tasks({e for e, _ in runs}, paper):
        task_runs = [runs[e, m] for m in METHODS if (e, m) in runs]
        plot_task(e, task_runs, opts.out / f"curve_{e}.png", opts.reps)
        print(f"{opts.out / f'curve_{e}.png'}: {', '.join(f'{r.method} {r.path.name}' for r in task_runs)}")
    aggregates = []
    for family in [f for f in FAMILIES if any(r.family == f for r in runs.values())]:
        agg = aggregate(family, runs, opts.reps)
        if agg is not None:
            plot_aggregate(agg, opts.out / f"aggregate_{family}.png")
            print(f"{opts.out / f'aggregate_{family}.png'}")
            aggregates.append(agg)
    opts.table.parent.mkdir(parents=True, exist_ok=True)
    opts.table.write_text(results_table(runs, paper, aggregates))
    print(f"{opts.table}")


if __name__ == "__main__":
    main()
