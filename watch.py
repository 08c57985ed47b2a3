"""Watch a trained policy: reload a saved run, play episodes of its task, write a GIF.

    python watch.py runs/<run>                          # seed 0's best checkpoint, 32 episodes
    python watch.py runs/<run> --seed-index 1 --which final --episodes 8 --gif-episodes 2

For a run trained with `--save-model` by any of the scripts (ippo, mappo, magpo_sable, ctds,
magpo_mat), it reloads one seed's deployed policy from `runs/<run>/models/`: the decentralised
actor (MAPPO/IPPO's actor, MAGPO's learner, CTDS's students), each agent acting on its own
observation only, or for a `--ctce` run the guider's joint policy (Sable, MAT). It prints the
return (and the task metric) of every episode and their mean ± std, then renders the first
episode(s) to a GIF with the environments' own renderers (jumanji's for RWARE, LBF and Connector;
jaxmarl's for SMAX and MPE; a small picture of ours for CoordSum).

The episodes are the script's own evaluation: `make_evaluate` of the script that trained the run,
with the key `PRNGKey(--seed)`, exactly as `python <script>.py --eval-from runs/<run>` does, so
with the same --seed and number of episodes the mean printed here is the one printed there. The
GIF replays the same episodes (the same keys, the same draws) while keeping the environment states.

Runs on the CPU without a display (matplotlib's Agg backend), also for runs trained on a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Callable, Literal, NamedTuple

import matplotlib

matplotlib.use("Agg")  # headless: before anything imports pyplot (jumanji and jaxmarl do)

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import tyro
from matplotlib import animation

import envs
import runs

ROOT = Path(__file__).resolve().parent


# ==================================================================================================
# Args
# ==================================================================================================
@dataclass(frozen=True)
class Args:
    run: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")]
    """the run folder, runs/<run>, of a run trained with --save-model"""
    seed_index: int = 0
    """which of the run's seeds to load (models/seed_<i>_*.msgpack)"""
    which: Literal["best", "final"] = "best"
    """the best evaluation checkpoint (what --eval-from evaluates) or the parameters at the end"""
    episodes: int = 32
    """episodes to play, each on its own environment (as --num-eval-episodes)"""
    seed: int = 0
    """the evaluation key is PRNGKey(seed), as --eval-from with the same --seed"""
    greedy: bool = False
    """act with the most likely action instead of sampling (the paper samples)"""
    gif_episodes: int = 1
    """how many of the first episodes the GIF shows, one after another (0: no GIF)"""
    gif: str | None = None
    """where to write the GIF; None: runs/<run>/<env-id>_seed<i>.gif (..._seed<i>_final.gif for --which final)"""
    max_frames: int | None = None
    """at most this many frames; None: all of the GIF's episodes"""
    fps: float = 10.0
    """frames per second of the GIF"""
    scale: float = 1.0
    """size of the frames: 1 draws them about 400 pixels wide"""


class WatchError(ValueError):
    """A bad flag or run folder: reported as one line on stderr, exit code 2."""


def check_args(args: Args) -> None:
    for name in ["episodes", "fps", "scale"]:
        if not getattr(args, name) > 0:
            raise WatchError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.max_frames is not None and args.max_frames < 1:
        raise WatchError(f"--max-frames must be positive, got {args.max_frames}")
    if not 0 <= args.gif_episodes <= args.episodes:
        raise WatchError(f"--gif-episodes must lie in 0..--episodes ({args.episodes}), got {args.gif_episodes}")
    if args.seed_index < 0:
        raise WatchError(f"--seed-index must be >= 0, got {args.seed_index}")


def parse_args(argv=None) -> Args:
    """tyro's parser, with its errors reduced to one line (as the training scripts do, but keeping
    the whole of a message that tyro wraps over several lines)."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer), contextlib.redirect_stdout(buffer):
            args = tyro.cli(Args, args=argv, description=__doc__.split("\n\n")[0])
    except SystemExit as exit:
        if exit.code in (0, None):  # --help
            sys.stdout.write(buffer.getvalue())
            raise
        lines = [re.sub(r"^[\s│╭╰─|]+|[\s│╮╯─|]+$", "", l) for l in buffer.getvalue().splitlines()]
        rule = lambda line: not set(line) - set("─-")
        text = [l for l in lines[1:] if l]  # the box's title is the first line (a rule may follow)
        text = text[1:] if text and rule(text[0]) else text
        text = text[: next((i for i, l in enumerate(text) if rule(l)), len(text))]  # up to the next rule
        message = " ".join(text) or "invalid arguments"
        raise WatchError(f"{message} (see --help)") from None
    check_args(args)
    return args


# ==================================================================================================
# Loading a run
# ==================================================================================================
@dataclass
class Run:
    """A saved run: the script that trained it, its flags, its environment."""

    path: Path
    module: ModuleType  # the training script, imported (ippo, mappo, magpo_sable, ctds, magpo_mat)
    args: Any  # the script's Args, as the run was trained
    env: envs.MultiAgentEnv
    joint: bool  # a --ctce run: the saved policy is the guider's centralised joint policy

    @property
    def guided(self) -> bool:
        """magpo_sable, ctds, magpo_mat: networks (actor, guider) and evaluate(..., centralised)."""
        return hasattr(self.module, "Guider")


def known_algos() -> list[str]:
    """The training scripts next to this file: those that save models and evaluate them."""
    return sorted(p.stem for p in ROOT.glob("*.py")
                  if p.stem not in ("watch", "envs", "runs") and "def evaluate_saved" in p.read_text())


def load_run(path: str | Path) -> Run:
    path = Path(path)
    if not path.is_dir():
        raise WatchError(f"{path}: no such run folder")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise WatchError(f"{path} is not a run folder (no config.json)")
    try:
        config = json.loads(config_path.read_text())
        algo, flags = config["algo"], config["args"]
    except (ValueError, KeyError, TypeError):
        raise WatchError(f"{config_path} is not a training script's config (no algo and args)") from None
    if algo not in known_algos():
        raise WatchError(f"{path} was trained by {algo}.py, which watch.py does not know "
                         f"(it knows {', '.join(known_algos())})")
    if not (path / "models").is_dir():
        raise WatchError(f"{path} has no saved policies (models/): train with --save-model")
    try:
        module = importlib.import_module(algo)
    except Exception as error:  # e.g. a script being edited
        raise WatchError(f"cannot import {algo}.py, which trained {path}: {error!r}") from None
    fields = {f.name for f in dataclasses.fields(module.Args)}
    # Flags the script no longer has are dropped, as its own --eval-from does.
    args = module.Args(**{k: v for k, v in flags.items() if k in fields})
    env = envs.make(args.env_id)
    return Run(path, module, args, env, joint=bool(getattr(args, "ctce", False)))


def model_path(run: Run, seed_index: int, which: str) -> Path:
    path = run.path / "models" / f"seed_{seed_index}_{which}.msgpack"
    if not path.is_file():
        saved = sorted(run.path.glob(f"models/seed_*_{which}.msgpack"))
        have = ", ".join(p.name.split("_")[1] for p in saved) or "none"
        raise WatchError(f"{run.path} has no {path.name} (--seed-index {seed_index}; saved seeds: {have})")
    return path


# ==================================================================================================
# The policy
# ==================================================================================================
class Policy(NamedTuple):
    """The deployed policy of a run, as one step of E environments."""

    init: Callable[[jax.Array], Any]  # key -> fresh parameters (their shapes are the template to load into)
    init_hidden: Callable[[int], Any]  # E -> the recurrent state of E fresh episodes
    act: Callable  # (params, hidden, timestep (E, ...), env_state, key) -> (hidden, action (E, A[, K]))


def make_policy(run: Run, greedy: bool) -> Policy:
    module, args, env = run.module, run.args, run.env
    A = env.num_agents
    actor, second = module.make_networks(args, env)

    if run.joint:  # the guider picks the agents' actions one after another, seeing all observations
        guider = second

        def init_hidden(num_envs):
            return module.zero_guider_hidden(args, num_envs)

        def act(params, hidden, timestep, env_state, key):
            action, _, _, hidden = guider.apply(params, hidden, timestep.obs, timestep.reset, env.position(env_state),
                                                timestep.action_mask, key, greedy, method=module.Guider.act)
            return hidden, action

        # `Guider.act` is the one signature every guided script shares, so the parameters are made
        # through it (magpo_sable's evaluate_saved uses its training call: the same parameters).
        def init(key):
            return guider.init(key, init_hidden(1), jnp.zeros((1, A, env.obs_dim)), jnp.zeros((1,), bool),
                               jnp.zeros((1,), jnp.int32), jnp.ones((1, A, env.num_actions), bool), key, greedy,
                               method=module.Guider.act)

        return Policy(init, init_hidden, act)

    def init_hidden(num_envs):
        return jnp.zeros((num_envs * A, args.hidden_dim))

    def act(params, hidden, timestep, env_state, key):
        # The agents are independent sequences of one batch: each sees its own observation only.
        ts = jax.tree_util.tree_map(lambda x: x[None], timestep)  # a time axis of 1
        reset = jnp.repeat(ts.reset, A, axis=1)
        hidden, pi = actor.apply(params, hidden, module.agents_to_batch(ts.obs), reset,
                                 module.agents_to_batch(ts.action_mask))
        action = pi.mode() if greedy else pi.sample(seed=key)
        return hidden, module.batch_to_agents(action, A)[0]

    def init(key):
        return actor.init(key, jnp.zeros((A, args.hidden_dim)), jnp.zeros((1, A, env.obs_dim)),
                          jnp.zeros((1, A), bool), jnp.ones((1, A, env.num_actions), bool))

    return Policy(init, init_hidden, act)


def load_policy(run: Run, seed_index: int = 0, which: str = "best", greedy: bool = False) -> tuple[Policy, Any]:
    """-> (the policy, its saved parameters) of one seed of a run."""
    policy = make_policy(run, greedy)
    template = jax.eval_shape(policy.init, jax.random.PRNGKey(0))  # shapes only, nothing computed
    what = f"{run.module.ALGO}'s {'guider' if run.joint else 'actor'} for {run.env.env_id}"
    try:
        return policy, runs.load_params(model_path(run, seed_index, which), template, what)
    except runs.ArgError as error:
        raise WatchError(str(error)) from None


# ==================================================================================================
# Playing
# ==================================================================================================
def make_evaluate(run: Run, greedy: bool) -> Callable:
    """The training script's own evaluation, evaluate(params, key, num_episodes) -> (returns,
    metrics): the numbers its --eval-from prints."""
    args = dataclasses.replace(run.args, greedy_eval=greedy)
    actor, second = run.module.make_networks(args, run.env)
    if run.guided:
        evaluate = run.module.make_evaluate(args, run.env, actor, second)
        return jax.jit(lambda params, key, n: evaluate(params, key, n, run.joint), static_argnums=2)
    return jax.jit(run.module.make_evaluate(args, run.env, actor), static_argnums=2)


class Steps(NamedTuple):
    """What the GIF needs of each step of the recorded episodes, (T, G, ...)."""

    inner: Any  # the environment's state right after the step, before any automatic reset
    action: jax.Array  # (T, G, A[, K]) the policy's actions
    reward: jax.Array  # (T, G) the step's reward, the mean over agents
    done: jax.Array  # (T, G)
    episode_return: jax.Array  # (T, G) where done
    episode_metric: jax.Array  # (T, G) where done


def make_play(run: Run, policy: Policy, num_episodes: int, num_recorded: int, num_steps: int | None = None) -> Callable:
    """play(params, key) -> (initial inner states (G, ...), Steps): the episodes of the script's
    `make_evaluate` (the same key splits, the same batch, so the same draws), keeping the states of
    the first G = num_recorded. Each environment's first episode is the one that counts.
    `num_steps` (default: the time limit, the longest an episode lasts) cuts the episodes short."""
    env, env_action = run.env, run.module.env_action
    first = lambda tree: jax.tree_util.tree_map(lambda x: x[:num_recorded], tree)

    def play(params, key):
        reset_key, key = jax.random.split(key)
        env_state, timestep = jax.vmap(env.reset)(jax.random.split(reset_key, num_episodes))
        initial = first(env_state.inner)

        def step(carry, step_key):
            env_state, timestep, hidden = carry
            hidden, action = policy.act(params, hidden, timestep, env_state, step_key)
            # `step` replaces an episode's last state by the next episode's first: keep it for the GIF.
            env_state, timestep, reached = jax.vmap(env.step_and_reached)(env_state, env_action(env, action))
            record = Steps(first(reached), first(action), first(timestep.reward.mean(-1)), first(timestep.done),
                           first(timestep.episode_return), first(timestep.episode_metric))
            return (env_state, timestep, hidden), record

        carry = (env_state, timestep, policy.init_hidden(num_episodes))
        step_keys = jax.random.split(key, env.time_limit)[:num_steps]
        _, steps = jax.lax.scan(step, carry, step_keys)
        return initial, steps

    return jax.jit(play)


@dataclass
class Episode:
    """One recorded episode, on the host: T steps, T + 1 states."""

    states: list  # the environment's inner state before each step, and after the last one
    actions: np.ndarray  # (T, A[, K])
    rewards: np.ndarray  # (T,)
    episode_return: float
    metric: float


def split_episodes(initial, steps: Steps) -> list[Episode]:
    """Cut each recorded environment's first episode out of the scan's output."""
    initial, steps = jax.device_get((initial, steps))
    episodes = []
    for g in range(steps.done.shape[1]):
        done = steps.done[:, g]
        end = int(np.argmax(done)) if done.any() else len(done) - 1  # or it was cut short (num_steps)
        take = lambda tree, t: jax.tree_util.tree_map(lambda x: x[t, g], tree)
        states = [jax.tree_util.tree_map(lambda x: x[g], initial)] + [take(steps.inner, t) for t in range(end + 1)]
        episodes.append(Episode(states, steps.action[: end + 1, g], steps.reward[: end + 1, g],
                                float(steps.episode_return[end, g]), float(steps.episode_metric[end, g])))
    return episodes


# ==================================================================================================
# Rendering
# ==================================================================================================
class Frame(NamedTuple):
    episode: Episode
    t: int  # the state before step t (t = T: after the episode's last step)
    number: int  # which recorded episode (1-based)


def frames_of(episodes: list[Episode], max_frames: int | None) -> list[Frame]:
    frames = [Frame(ep, t, i + 1) for i, ep in enumerate(episodes) for t in range(len(ep.states))]
    return frames[:max_frames]


@contextlib.contextmanager
def gif_settings(dpi: float):
    """The renderers that save their own animations (jumanji, jaxmarl's MPE) pick matplotlib's
    default writer and resolution: make those Pillow's GIF writer (no ffmpeg needed) and `dpi`."""
    with matplotlib.rc_context({"animation.writer": "pillow", "savefig.dpi": dpi}):
        yield


def render_jumanji(env: envs.MultiAgentEnv, frames: list[Frame], path: Path, fps: float, dpi: float) -> None:
    """RWARE, LBF, Connector: the inner state is jumanji's, drawn by jumanji's `animate`."""
    with gif_settings(dpi):
        env.inner_env.animate([f.episode.states[f.t] for f in frames], interval=1000 / fps, save_path=str(path))


def render_mpe(env: envs.MultiAgentEnv, frames: list[Frame], path: Path, fps: float, dpi: float) -> None:
    """MPE: the inner state is jaxmarl's, drawn by jaxmarl's MPEVisualizer."""
    from jaxmarl.environments.mpe.mpe_visualizer import MPEVisualizer

    with gif_settings(dpi), contextlib.redirect_stdout(io.StringIO()):  # it prints "Comm active?"
        visualizer = MPEVisualizer(env.inner_env, [f.episode.states[f.t] for f in frames])
        visualizer.interval = 1000 / fps
        visualizer.animate(save_fname=str(path), view=False)
    plt.close(visualizer.fig)


def render_smax(env: envs.MultiAgentEnv, frames: list[Frame], path: Path, fps: float, dpi: float) -> None:
    """SMAX: jaxmarl's own drawing (`init_render`: units as circles, allies blue, enemies green,
    lighter while shot at, bullets in flight), one frame per step.

    Not through jaxmarl's SMAXVisualizer, which first re-simulates every step to draw the 8 world
    steps the simulator takes per env step (8x the frames, and its enemies would draw their random
    actions with other keys than ours did). Two quirks of `init_render` are worked around: it
    draws, then reads its own figure back as raw pixels (so the figure must be saved at its own
    dpi) and shows that as an image over the axes, which we remove."""
    sim = env.inner_env  # HeuristicEnemySMAX, which hands the simulator's methods through
    world_steps = sim.world_steps_per_env_step
    fig, ax = plt.subplots(figsize=(5, 5), dpi=dpi)
    # The units are small on the 32 x 32 map: show the square around wherever they go in these
    # frames (the same for all of them, so that the view does not jump), with a margin.
    positions = np.concatenate([f.episode.states[f.t].env.state.unit_positions for f in frames])
    centre = (positions.min(0) + positions.max(0)) / 2
    half = max(float((positions.max(0) - positions.min(0)).max()) / 2 + 3.0, 6.0)

    def draw(frame: Frame):
        ep, t = frame.episode, frame.t
        battle = ep.states[t].env.state
        # The attacks of step t (jaxmarl's raw attack actions of every unit, 0 for none) are in the
        # state that the step reached, as `prev_attack_actions`; drawn half-way, as bullets in flight.
        attacks = ep.states[t + 1].env.state.prev_attack_actions if t < len(ep.actions) else None
        actions = {unit: int(attacks[i]) if attacks is not None else 0 for i, unit in enumerate(sim.all_agents)}
        image = sim.init_render(ax, (None, battle, actions), world_steps // 2, t)
        image.remove()
        ax.set_xlim(centre[0] - half, centre[0] + half)
        ax.set_ylim(centre[1] - half, centre[1] + half)
        ax.set_title(f"episode {frame.number}, step {t}: {int(battle.unit_alive[:env.num_agents].sum())} allies "
                     f"vs {int(battle.unit_alive[env.num_agents:].sum())} enemies", fontsize=9)
        return ()

    anim = animation.FuncAnimation(fig, draw, frames=frames, init_func=lambda: (), cache_frame_data=False)
    anim.save(str(path), writer=animation.PillowWriter(fps=fps), dpi=fig.dpi)
    plt.close(fig)


def render_coordsum(env: envs.MultiAgentEnv, frames: list[Frame], path: Path, fps: float, dpi: float) -> None:
    """CoordSum has no renderer: one small picture per step. Top row: the agents' numbers stacked
    into one bar, which scores when it ends on the target (the black line). Bottom row: agent 0's
    number and the opponent's guess of it (red); the reward is 2 when the guess misses, else 1."""
    A = env.num_agents
    colors = plt.get_cmap("tab10").colors
    fig, ax = plt.subplots(figsize=(4.8, 1.9), dpi=dpi)
    fig.subplots_adjust(left=0.17, right=0.97, top=0.84, bottom=0.15)
    width = max(env.num_targets, A * (env.num_actions - 1)) + 1  # every possible sum fits

    def draw(frame: Frame):
        ep, t = frame.episode, frame.t
        ax.clear()
        ax.set_xlim(0, width)
        ax.set_ylim(-0.6, 1.6)
        ax.set_yticks([1, 0], ["sum", "agent 0,\nguess"], fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        if t == len(ep.actions):  # the state after the last step: nothing to draw but the result
            ax.set_title(f"episode {frame.number} over: return {ep.episode_return:.0f}", fontsize=9)
            return ()
        state, actions = ep.states[t], ep.actions[t].astype(int)
        target = int(state.target)
        # The opponent's guess, as the env computes it: agent 0's most frequent number for this
        # target so far in the episode (the smallest on ties, 0 without history).
        guess = int(np.argmax(state.counts[target]))
        left = 0
        for i, a in enumerate(actions):
            ax.barh(1, a, left=left, height=0.6, color=colors[i % 10], edgecolor="white")
            if a:
                ax.text(left + a / 2, 1, str(a), ha="center", va="center", fontsize=7, color="white")
            left += a
        ax.plot([target, target], [0.55, 1.45], color="black", linewidth=2)
        ax.barh(0, actions[0], height=0.6, color=colors[0])
        ax.plot([guess, guess], [-0.45, 0.45], color="red", linewidth=2)
        verdict = "right" if guess == actions[0] else "wrong"
        ax.text(width - 0.3, 0, f"opponent's guess {guess}: {verdict}", color="red", ha="right", va="center",
                fontsize=8)
        ax.set_title(f"episode {frame.number}, step {t + 1}: target {target}, sum {actions.sum()}, "
                     f"reward {ep.rewards[t]:.0f}", fontsize=9)
        return ()

    anim = animation.FuncAnimation(fig, draw, frames=frames, init_func=lambda: (), cache_frame_data=False)
    anim.save(str(path), writer=animation.PillowWriter(fps=fps), dpi=dpi)
    plt.close(fig)


# Each family's renderer and the resolution (dots per inch) that draws its figure about 400 pixels
# wide: jumanji's figures are 10 inches wide, jaxmarl's MPE figure and our SMAX one 5, CoordSum's 4.8.
RENDERERS = {"coordsum": (render_coordsum, 100), "rware": (render_jumanji, 40), "lbf": (render_jumanji, 40),
             "connector": (render_jumanji, 40), "smax": (render_smax, 80), "mpe": (render_mpe, 80)}


def render_gif(env: envs.MultiAgentEnv, episodes: list[Episode], path: Path, fps: float = 10.0,
               scale: float = 1.0, max_frames: int | None = None) -> int:
    """Write the episodes, one after another, as a GIF; -> the number of frames."""
    frames = frames_of(episodes, max_frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    render, dpi = RENDERERS[env.family]
    render(env, frames, path, fps, dpi * scale)
    return len(frames)


# ==================================================================================================
# main
# ==================================================================================================
def describe(env: envs.MultiAgentEnv, episode_return: float, metric: float) -> str:
    line = f"return {episode_return:9.3f}"
    return line if env.metric_is_return else line + f", {env.metric_name} {metric:.3f}"


def main(argv=None) -> None:
    args = parse_args(argv)
    run = load_run(args.run)
    env = run.env
    policy, params = load_policy(run, args.seed_index, args.which, args.greedy)
    what = "the guider's joint policy" if run.joint else "the decentralised actor"
    print(f"{run.module.ALGO} run {run.path} on {env!r}\nseed {args.seed_index}, {args.which} parameters: {what}, "
          f"{args.episodes} episodes, {'greedy' if args.greedy else 'sampled'} actions, key PRNGKey({args.seed})",
          flush=True)

    key = jax.random.PRNGKey(args.seed)
    returns, metrics = jax.device_get(make_evaluate(run, args.greedy)(params, key, args.episodes))
    for i, (r, m) in enumerate(zip(returns, metrics)):
        print(f"episode {i + 1:>3}: {describe(env, float(r), float(m))}")
    # The line --eval-from prints, to compare.
    line = f"seed_{args.seed_index}_{args.which}.msgpack: {env.env_id} return {returns.mean():.3f} ± {returns.std():.3f}"
    if not env.metric_is_return:
        line += f", {env.metric_name} {metrics.mean():.3f}"
    print(line + f" over {args.episodes} episodes", flush=True)

    if args.gif_episodes == 0:
        return
    play = make_play(run, policy, args.episodes, args.gif_episodes)
    episodes = split_episodes(*play(params, key))
    replayed = np.array([ep.episode_return for ep in episodes])
    if not np.allclose(replayed, returns[: len(episodes)], atol=1e-4):  # not expected: same ops, same keys
        print(f"note: the replayed episodes returned {replayed} where the evaluation had "
              f"{returns[: len(episodes)]} (floating-point differences between the two compiled programs)")
    default = f"{env.env_id}_seed{args.seed_index}{'' if args.which == 'best' else '_final'}.gif"
    path = Path(args.gif) if args.gif else run.path / default
    num_frames = render_gif(env, episodes, path, args.fps, args.scale, args.max_frames)
    shown = "episode 1" if len(episodes) == 1 else f"episodes 1-{len(episodes)}"
    print(f"gif: {path} ({shown}, {num_frames} frames, {path.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    try:
        main()
    except (WatchError, envs.UnknownEnvError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
