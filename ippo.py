"""Recurrent IPPO: independent PPO with parameter sharing, a GRU actor and a GRU critic per agent.

Every agent acts on its own observation (which carries a one-hot agent id, so one set of shared
parameters can still behave differently per agent) and its critic sees that same observation.
Each update collects `rollout_length` steps from `num_envs` environments, computes GAE advantages,
and runs `ppo_epochs` epochs of clipped PPO over minibatches of whole environment sequences (cut
into chunks of `recurrent_chunk_size` steps, each replayed from the GRU state stored at its start).

    python ippo.py --env-id rware-tiny-4ag
    python ippo.py --env-id coordsum-3x10 --preset paper      # the paper's tuned configuration

The whole run, all seeds, is one compiled `jax.jit(jax.vmap(train))` call. At each of `num_evals`
checkpoints the actor plays `num_eval_episodes` fresh episodes; at the end the best checkpoint is
re-evaluated on 10x as many episodes (the paper's absolute metric). Results stream to
`runs/<run-name>/` as they happen.

Differs from mappo.py in: the critic reads each agent's own observation, not the global state.

Shapes: S seeds, T rollout steps, E envs, A agents, D observation features, G global-state
features, K actions, H GRU width, B = E*A sequences fed to a network at once, C chunk length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.linen.initializers import constant, orthogonal

import envs
import runs
from runs import TanhNormal  # Mava's continuous policy: a distribution, as distrax.Categorical is

ALGO = "ippo"


# ==================================================================================================
# Args
# ==================================================================================================
@dataclass(frozen=True)
class Args(runs.RunArgs):
    # --- shared: spelled identically in every script (the run's other flags: runs.RunArgs) ---
    num_envs: int = 128
    """parallel training environments per seed (the paper: 64 envs x update_batch_size 2)"""
    rollout_length: int = 128
    """steps collected from each environment per update"""
    num_minibatches: int = 2
    """minibatches per PPO epoch, split along environments (must divide num_envs * chunks)"""
    ppo_epochs: int = 4
    """passes over each rollout"""
    lr: float = 2.5e-4
    """Adam learning rate (actor and critic, as the paper's configurations use one value for both)"""
    gamma: float = 0.99
    """discount factor"""
    gae_lambda: float = 0.95
    """GAE lambda. NOTE(paper vs official code): the paper's Table 2 says 0.9; its code used 0.95"""
    clip_eps: float = 0.2
    """PPO clip epsilon (also clips the value update, as Mava does)"""
    ent_coef: float = 0.01
    """entropy bonus coefficient"""
    vf_coef: float = 0.5
    """value loss coefficient. NOTE(paper vs official code): the paper says 0.1; its code used 0.5"""
    max_grad_norm: float = 0.5
    """global gradient norm clip, per network"""
    recurrent_chunk_size: Annotated[int | None, runs.default_is("the whole rollout")] = None
    """truncated-BPTT chunk length for the update"""
    hidden_dim: int = 128
    """width of the MLP layers and of the GRU (the paper's Table 3: 128)"""

    @property
    def chunk_size(self) -> int:
        return self.recurrent_chunk_size or self.rollout_length


def check_args(args: Args) -> None:
    runs.check_run_args(args)  # the shared flags: finite, positive, a batch that splits as they say


def apply_preset(args: Args, explicit: set[str]) -> Args:
    """The paper's tuned values for this task and algorithm, under every explicitly given flag."""
    return runs.preset_values(args, runs.paper_row(args, ALGO), explicit)  # args as they are without --preset


# ==================================================================================================
# Networks
# ==================================================================================================
class ScannedGRU(nn.Module):
    """A GRU over time. The hidden state is zeroed where `reset` marks the first step of an
    episode, inside the scan and before the cell, so that rollout and replay share one path."""

    hidden_dim: int

    @nn.compact
    def __call__(self, hidden, inputs):  # hidden (B, H); inputs: x (T, B, F), reset (T, B)
        def step(cell, hidden, xs):
            x, reset = xs
            hidden = jnp.where(reset[:, None], jnp.zeros_like(hidden), hidden)
            return cell(hidden, x)

        scan = nn.scan(step, variable_broadcast="params", split_rngs={"params": False})
        return scan(nn.GRUCell(self.hidden_dim), hidden, inputs)


def policy_entropy(pi, key):
    """What the entropy bonus maximises: a categorical's entropy, exactly; a TanhNormal's, Mava's
    one-sample estimate at a draw from `key` (a new key per minibatch, as Mava's update)."""
    return pi.entropy(seed=key) if isinstance(pi, TanhNormal) else pi.entropy()


class ActionHead(nn.Module):
    """Masked categorical for discrete tasks; for continuous ones (MPE) Mava's ContinuousActionHead:
    a TanhNormal whose mean is a linear map of the features and whose std, one parameter per action
    dimension shared by all states, is softplus(log_std) + min_std (log_std starts at 0: std 0.6941)."""

    num_actions: int
    continuous: bool
    min_std: float = 1e-3  # Mava's min_scale (its MAT decoder has none)

    @nn.compact
    def __call__(self, x, action_mask):
        if self.continuous:
            mean = nn.Dense(self.num_actions, kernel_init=orthogonal(0.01), bias_init=constant(0.0))(x)
            log_std = self.param("log_std", nn.initializers.zeros, (self.num_actions,))
            return TanhNormal(mean, (jax.nn.softplus(log_std) + self.min_std) * jnp.ones_like(mean))
        logits = nn.Dense(self.num_actions, kernel_init=orthogonal(0.01), bias_init=constant(0.0))(x)
        return distrax.Categorical(logits=jnp.where(action_mask, logits, jnp.finfo(jnp.float32).min))


class Actor(nn.Module):
    """The decentralised policy: MLP [H] -> GRU H -> MLP [H] -> action head (the paper's Table 3)."""

    num_actions: int
    continuous: bool
    hidden_dim: int = 128

    @nn.compact
    def __call__(self, hidden, obs, reset, action_mask):  # obs (T, B, D), reset (T, B), mask (T, B, K)
        x = nn.relu(nn.Dense(self.hidden_dim, kernel_init=orthogonal(math.sqrt(2)))(obs))
        hidden, x = ScannedGRU(self.hidden_dim)(hidden, (x, reset))
        x = nn.relu(nn.Dense(self.hidden_dim, kernel_init=orthogonal(math.sqrt(2)))(x))
        return hidden, ActionHead(self.num_actions, self.continuous)(x, action_mask)


class Critic(nn.Module):
    """State value per agent: MLP [H] -> GRU H -> MLP [H] -> 1."""

    hidden_dim: int = 128

    @nn.compact
    def __call__(self, hidden, critic_obs, reset):  # critic_obs (T, B, D or G), reset (T, B)
        x = nn.relu(nn.Dense(self.hidden_dim, kernel_init=orthogonal(math.sqrt(2)))(critic_obs))
        hidden, x = ScannedGRU(self.hidden_dim)(hidden, (x, reset))
        x = nn.relu(nn.Dense(self.hidden_dim, kernel_init=orthogonal(math.sqrt(2)))(x))
        return hidden, nn.Dense(1, kernel_init=orthogonal(1.0))(x)[..., 0]


def critic_input(timestep) -> jax.Array:  # an envs.TimeStep, or a Transition (batched alike)
    """What the critic reads: IPPO's critic sees each agent's own observation, (E, A, D)."""
    return timestep.obs


def agents_to_batch(x: jax.Array) -> jax.Array:
    """(T, E, A, ...) -> (T, E*A, ...): agents become independent sequences for a network call."""
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def batch_to_agents(x: jax.Array, num_agents: int) -> jax.Array:
    """(T, E*A, ...) -> (T, E, A, ...)."""
    return x.reshape(x.shape[0], x.shape[1] // num_agents, num_agents, *x.shape[2:])


def env_action(env: envs.MultiAgentEnv, action: jax.Array) -> jax.Array:
    """The policy's action as the environment takes it (continuous: the squashed action, in [-1, 1],
    mapped linearly onto the env's box; MPE's box is [-1, 1], so it goes unchanged, as in Mava)."""
    if not env.continuous:
        return action
    return 0.5 * (env.action_high + env.action_low) + 0.5 * (env.action_high - env.action_low) * action


# ==================================================================================================
# Containers
# ==================================================================================================
class Transition(NamedTuple):
    obs: jax.Array  # (E, A, D) the actor's input
    global_state: jax.Array  # (E, G) for critic_input; IPPO never reads it, so XLA never stores it
    reset: jax.Array  # (E,) this observation starts an episode: resets the GRUs
    action_mask: jax.Array  # (E, A, K)
    action: jax.Array  # (E, A) or (E, A, K) for continuous
    log_prob: jax.Array  # (E, A) under the behaviour policy
    value: jax.Array  # (E, A)
    reward: jax.Array  # (E, A)
    done: jax.Array  # (E,) the episode ended with this step: no bootstrap through it (GAE)
    episode_return: jax.Array  # (E,) nonzero only where done
    episode_metric: jax.Array  # (E,)


class Params(NamedTuple):
    actor: Any
    critic: Any


class OptStates(NamedTuple):
    actor: Any
    critic: Any


class TrainState(NamedTuple):  # what the gradient steps change
    params: Params
    opt_states: OptStates


class Batch(NamedTuple):  # what the update trains on: the rollout as (T//C, C, E, ...), a minibatch as (C, n, ...)
    traj: Transition
    advantages: jax.Array  # (..., A)
    targets: jax.Array  # (..., A) the critic's value targets


class Hidden(NamedTuple):  # the GRU states a sequence of the update starts from
    actor: jax.Array  # (n*A, H); stored as (T//C, E*A, H)
    critic: jax.Array


class RunnerState(NamedTuple):
    params: Params
    opt_states: OptStates
    env_state: envs.EnvState  # batched over E
    timestep: envs.TimeStep  # the latest, batched over E
    actor_hidden: jax.Array  # (E*A, H)
    critic_hidden: jax.Array  # (E*A, H)
    key: jax.Array
    best_actor: Any  # actor parameters of the best evaluation checkpoint so far
    best_return: jax.Array  # () its mean evaluation return


# ==================================================================================================
# Pure math (no networks: the tests import these)
# ==================================================================================================
def compute_gae(rewards, values, dones, last_value, gamma, gae_lambda):
    """Generalised advantage estimation, time-major: rewards, values (T, ...), dones (T, ...) with
    dones[t] = the episode ended with step t (then nothing is bootstrapped through it), last_value
    the value of the observation after the last step. Returns (advantages, value targets).

    NOTE(paper vs official code): as in Mava, a time-limit truncation counts as an ending too."""

    def step(carry, xs):
        gae, next_value = carry
        reward, value, done = xs
        not_done = 1.0 - done
        delta = reward + gamma * next_value * not_done - value
        gae = delta + gamma * gae_lambda * not_done * gae
        return (gae, value), gae

    _, advantages = jax.lax.scan(
        step, (jnp.zeros_like(last_value), last_value), (rewards, values, dones.astype(jnp.float32)),
        reverse=True, unroll=16,
    )
    return advantages, advantages + values


def ppo_clip_objective(log_prob, old_log_prob, advantages, clip_eps):
    """PPO-clip loss to minimise: -E[min(r A, clip(r, 1-eps, 1+eps) A)], r = pi/pi_old.
    Returns (loss, approx_kl, clip_frac)."""
    log_ratio = log_prob - old_log_prob
    ratio = jnp.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    loss = -jnp.minimum(unclipped, clipped).mean()
    approx_kl = ((ratio - 1.0) - log_ratio).mean()  # the low-variance k3 estimator of KL(old||new)
    clip_frac = (jnp.abs(ratio - 1.0) > clip_eps).mean()
    return loss, approx_kl, clip_frac


def clipped_value_loss(value, old_value, targets, clip_eps):
    """0.5 * max((v - R)^2, (v_old + clip(v - v_old, -eps, eps) - R)^2), as Mava's PPO."""
    clipped = old_value + jnp.clip(value - old_value, -clip_eps, clip_eps)
    return 0.5 * jnp.maximum(jnp.square(value - targets), jnp.square(clipped - targets)).mean()


def normalize(x):
    return (x - x.mean()) / (x.std() + 1e-8)


def keep_best(best_params, best_return, params, mean_return):
    """The best evaluation checkpoint so far, for the absolute metric. Ties go to the later
    checkpoint, as in Mava (rec_magpo.py replaces its best with `<=`)."""
    better = (mean_return >= best_return) & jnp.isfinite(runs.max_abs(params))  # never a diverged policy
    best_params = jax.tree_util.tree_map(lambda b, p: jnp.where(better, p, b), best_params, params)
    return best_params, jnp.where(better, mean_return, best_return)


# ==================================================================================================
# Training
# ==================================================================================================
def make_networks(args: Args, env: envs.MultiAgentEnv):
    return Actor(env.num_actions, env.continuous, args.hidden_dim), Critic(args.hidden_dim)


def make_optimizer(args: Args):
    return optax.chain(optax.clip_by_global_norm(args.max_grad_norm), optax.adam(args.lr, eps=1e-5))


def make_evaluate(args: Args, env: envs.MultiAgentEnv, actor: Actor):
    """evaluate(actor_params, key, num_episodes) -> (returns, metrics), each (num_episodes,):
    one episode on each of num_episodes fresh envs, the actor on local observations only."""

    def evaluate(actor_params, key, num_episodes):
        B = num_episodes * env.num_agents
        reset_key, key = jax.random.split(key)
        env_state, timestep = jax.vmap(env.reset)(jax.random.split(reset_key, num_episodes))
        hidden = jnp.zeros((B, args.hidden_dim))
        finished = jnp.zeros((num_episodes,), bool)
        returns = jnp.zeros((num_episodes,))
        metrics = jnp.zeros((num_episodes,))

        def step(carry, step_key):
            env_state, timestep, hidden, finished, returns, metrics = carry
            ts = jax.tree_util.tree_map(lambda x: x[None], timestep)
            reset = jnp.repeat(ts.reset, env.num_agents, axis=1)
            hidden, pi = actor.apply(actor_params, hidden, agents_to_batch(ts.obs), reset,
                                     agents_to_batch(ts.action_mask))
            action = pi.mode() if args.greedy_eval else pi.sample(seed=step_key)
            action = batch_to_agents(action, env.num_agents)[0]
            env_state, timestep = jax.vmap(env.step)(env_state, env_action(env, action))
            first_end = timestep.done & ~finished  # each env contributes its first episode only
            returns = jnp.where(first_end, timestep.episode_return, returns)
            metrics = jnp.where(first_end, timestep.episode_metric, metrics)
            return (env_state, timestep, hidden, finished | timestep.done, returns, metrics), None

        carry = (env_state, timestep, hidden, finished, returns, metrics)
        carry, _ = jax.lax.scan(step, carry, jax.random.split(key, env.time_limit))
        return carry[4], carry[5]

    return evaluate


def make_train(args: Args, env: envs.MultiAgentEnv, report=None):
    """The run of one seed, to be jitted and vmapped, as runs.Train(init, train): init(key) -> the
    RunnerState before the first update; train(runner, seed_index, first_checkpoint) -> results, the
    run from that state on (a fresh run from checkpoint 0, a resumed one after its saved checkpoint).

    `report(seed_index, checkpoint, metrics, runner)` is called from inside the compiled run (a host
    callback) after each evaluation, so progress, results and the run's state stream out while it trains."""
    actor, critic = make_networks(args, env)
    optimizer = make_optimizer(args)
    evaluate = make_evaluate(args, env, actor)
    E, A, T, C, H = args.num_envs, env.num_agents, args.rollout_length, args.chunk_size, args.hidden_dim

    def init(key) -> RunnerState:  # the runner state before the first update
        # ------------------------------------------------------------------ INIT
        key, actor_key, critic_key, env_key = jax.random.split(key, 4)
        env_state, timestep = jax.vmap(env.reset)(jax.random.split(env_key, E))
        zeros_hidden = jnp.zeros((E * A, H))
        ts1 = jax.tree_util.tree_map(lambda x: x[None], timestep)
        reset1 = jnp.repeat(ts1.reset, A, axis=1)
        actor_params = actor.init(actor_key, zeros_hidden, agents_to_batch(ts1.obs), reset1,
                                  agents_to_batch(ts1.action_mask))
        critic_params = critic.init(critic_key, zeros_hidden, agents_to_batch(critic_input(ts1)), reset1)
        params = Params(actor_params, critic_params)
        opt_states = OptStates(optimizer.init(actor_params), optimizer.init(critic_params))
        return RunnerState(params, opt_states, env_state, timestep, zeros_hidden, zeros_hidden, key,
                           actor_params, jnp.float32(-jnp.inf))

    def train(runner: RunnerState, seed_index, first_checkpoint):

        def update(runner: RunnerState, _):
            # ------------------------------------------------------------------ COLLECT TRAJECTORIES
            def env_step(runner: RunnerState, _):
                key, action_key = jax.random.split(runner.key)
                ts = jax.tree_util.tree_map(lambda x: x[None], runner.timestep)  # a time axis of 1
                reset = jnp.repeat(ts.reset, A, axis=1)
                actor_hidden, pi = actor.apply(runner.params.actor, runner.actor_hidden,
                                               agents_to_batch(ts.obs), reset, agents_to_batch(ts.action_mask))
                critic_hidden, value = critic.apply(runner.params.critic, runner.critic_hidden,
                                                    agents_to_batch(critic_input(ts)), reset)
                action, log_prob = pi.sample_and_log_prob(seed=action_key)
                action, log_prob, value = (batch_to_agents(x, A)[0] for x in (action, log_prob, value))
                env_state, timestep = jax.vmap(env.step)(runner.env_state, env_action(env, action))
                transition = Transition(
                    obs=runner.timestep.obs, global_state=runner.timestep.global_state,
                    reset=runner.timestep.reset, action_mask=runner.timestep.action_mask,
                    action=action, log_prob=log_prob, value=value, reward=timestep.reward,
                    done=timestep.done, episode_return=timestep.episode_return,
                    episode_metric=timestep.episode_metric,
                )
                runner = runner._replace(env_state=env_state, timestep=timestep, actor_hidden=actor_hidden,
                                         critic_hidden=critic_hidden, key=key)
                return runner, transition

            def chunk(runner: RunnerState, _):
                # The GRU states at the start of each chunk are what the update replays from.
                start_hidden = Hidden(runner.actor_hidden, runner.critic_hidden)
                runner, transitions = jax.lax.scan(env_step, runner, None, C)
                return runner, (transitions, start_hidden)

            runner, (traj_batch, start_hidden) = jax.lax.scan(chunk, runner, None, T // C)
            traj_batch = jax.tree_util.tree_map(lambda x: x.reshape(T, *x.shape[2:]), traj_batch)

            # ------------------------------------------------------------------ CALCULATE ADVANTAGE
            ts = jax.tree_util.tree_map(lambda x: x[None], runner.timestep)
            _, last_value = critic.apply(runner.params.critic, runner.critic_hidden,
                                         agents_to_batch(critic_input(ts)), jnp.repeat(ts.reset, A, axis=1))
            last_value = batch_to_agents(last_value, A)[0]
            dones = jnp.repeat(traj_batch.done[..., None], A, axis=-1)
            advantages, targets = compute_gae(traj_batch.reward, traj_batch.value, dones, last_value,
                                              args.gamma, args.gae_lambda)

            # ------------------------------------------------------------------ UPDATE NETWORK
            def loss_actor(actor_params, batch: Batch, hidden, entropy_key):
                traj, advantages = batch.traj, batch.advantages
                reset = jnp.repeat(traj.reset[..., None], A, axis=-1)
                _, pi = actor.apply(actor_params, hidden, agents_to_batch(traj.obs),
                                    agents_to_batch(reset), agents_to_batch(traj.action_mask))
                log_prob = batch_to_agents(pi.log_prob(agents_to_batch(traj.action)), A)
                loss, approx_kl, clip_frac = ppo_clip_objective(log_prob, traj.log_prob, normalize(advantages),
                                                                args.clip_eps)
                entropy = policy_entropy(pi, entropy_key).mean()
                # max |ratio - 1|: exactly 0 on an update's first minibatch unless the replay of the
                # GRU (hidden states, resets, chunking) is misaligned with the rollout
                ratio_dev = jnp.abs(jnp.exp(log_prob - traj.log_prob) - 1.0).max()
                return loss - args.ent_coef * entropy, (loss, entropy, approx_kl, clip_frac, ratio_dev)

            def loss_critic(critic_params, batch: Batch, hidden):
                traj, targets = batch.traj, batch.targets
                reset = jnp.repeat(traj.reset[..., None], A, axis=-1)
                _, value = critic.apply(critic_params, hidden, agents_to_batch(critic_input(traj)),
                                        agents_to_batch(reset))
                value_loss = clipped_value_loss(batch_to_agents(value, A), traj.value, targets, args.clip_eps)
                return args.vf_coef * value_loss, value_loss

            def minibatch_update(train_state: TrainState, batch: Batch, hidden: Hidden, entropy_key):
                params, opt_states = train_state
                (_, (actor_loss, entropy, approx_kl, clip_frac, ratio_dev)), actor_grads = jax.value_and_grad(
                    loss_actor, has_aux=True)(params.actor, batch, hidden.actor, entropy_key)
                (_, value_loss), critic_grads = jax.value_and_grad(loss_critic, has_aux=True)(
                    params.critic, batch, hidden.critic)
                actor_updates, actor_opt = optimizer.update(actor_grads, opt_states.actor)
                critic_updates, critic_opt = optimizer.update(critic_grads, opt_states.critic)
                params = Params(optax.apply_updates(params.actor, actor_updates),
                                optax.apply_updates(params.critic, critic_updates))
                losses = {"loss/actor": actor_loss, "loss/value": value_loss, "loss/entropy": entropy,
                          "loss/approx_kl": approx_kl, "loss/clip_frac": clip_frac, "loss/ratio_dev": ratio_dev}
                return TrainState(params, OptStates(actor_opt, critic_opt)), losses

            # Sequence n = k * E + e is env e's k-th chunk: (T, E, ...) is viewed as (T//C, C, E, ...), and
            # only a minibatch's own sequences are ever gathered (no reordered copy of the rollout).
            rollout = jax.tree_util.tree_map(lambda x: x.reshape(T // C, C, E, *x.shape[2:]),
                                             Batch(traj_batch, advantages, targets))

            def sequences(x, indices):  # (T//C, C, E, ...) -> the sequences `indices`, (C, len(indices), ...)
                return jnp.swapaxes(x[indices // E, :, indices % E], 0, 1)

            # Stored hidden states (T//C, E*A, H) -> (T//C * E, A, H), matching the sequence order.
            stored_hidden = jax.tree_util.tree_map(lambda h: h.reshape((T // C) * E, A, H), start_hidden)
            N = (T // C) * E

            def epoch(train_state: TrainState, epoch_key):
                # A new order of the sequences each epoch, cut into minibatches; each minibatch gathers its
                # own (a shuffled copy of the rollout would be most of a run's memory on large views).
                minibatches = jax.random.permutation(epoch_key, N).reshape(args.num_minibatches, -1)
                # a key per minibatch for a continuous policy's entropy estimate (unused if discrete)
                entropy_keys = jax.random.split(jax.random.fold_in(epoch_key, 1), args.num_minibatches)

                def gather_and_update(train_state: TrainState, xs):
                    indices, entropy_key = xs
                    batch = jax.tree_util.tree_map(lambda x: sequences(x, indices), rollout)
                    hidden = jax.tree_util.tree_map(lambda h: jnp.take(h, indices, axis=0).reshape(-1, H), stored_hidden)
                    return minibatch_update(train_state, batch, hidden, entropy_key)

                return jax.lax.scan(gather_and_update, train_state, (minibatches, entropy_keys))

            key, epoch_key = jax.random.split(runner.key)
            (params, opt_states), losses = jax.lax.scan(
                epoch, TrainState(runner.params, runner.opt_states), jax.random.split(epoch_key, args.ppo_epochs))
            runner = runner._replace(params=params, opt_states=opt_states, key=key)

            ended = traj_batch.done.sum()
            train_metrics = {k: v.mean() for k, v in losses.items() if k != "loss/ratio_dev"}
            train_metrics["loss/first_ratio_dev"] = losses["loss/ratio_dev"][0, 0]  # first epoch, first minibatch
            train_metrics["episode_return"] = traj_batch.episode_return.sum() / jnp.maximum(ended, 1)
            train_metrics["episodes"] = ended
            return runner, train_metrics

        def checkpoint(runner: RunnerState, index):
            runner, train_metrics = jax.lax.scan(update, runner, None, args.updates_per_eval)
            # ------------------------------------------------------------------ EVALUATE
            key, eval_key = jax.random.split(runner.key)
            returns, metrics = evaluate(runner.params.actor, eval_key, args.num_eval_episodes)
            best_actor, best_return = keep_best(runner.best_actor, runner.best_return, runner.params.actor, returns.mean())
            runner = runner._replace(key=key, best_actor=best_actor, best_return=best_return)
            summary = runs.checkpoint_summary(train_metrics, runner.params)
            out = {"eval/episode_return": returns, "eval/episode_metric": metrics, **summary}
            if report is not None:
                jax.debug.callback(report, seed_index, index, out, runner if args.save_state else None)
            return runner, out

        runner, history = runs.scan_checkpoints(checkpoint, runner, first_checkpoint, args.num_evals)
        # The paper's absolute metric: the best checkpoint, re-evaluated on 10x the episodes.
        key, abs_key = jax.random.split(runner.key)
        abs_returns, abs_metrics = evaluate(runner.best_actor, abs_key, 10 * args.num_eval_episodes)
        return {"history": history, "absolute/episode_return": abs_returns,
                "absolute/episode_metric": abs_metrics, "actor": runner.params.actor,
                "best_actor": runner.best_actor}

    return runs.Train(init, train)


# ==================================================================================================
# main. The run plumbing around it (the command line, the run folder, progress lines and result
# files, wandb, saving and reloading) is the same in every script: runs.py.
# ==================================================================================================
def parse_args(argv=None) -> Args:
    """tyro's parser, with its errors reduced to one line on stderr and exit code 2; then --preset."""
    return runs.parse_args(Args, apply_preset, __doc__, argv)


def evaluate_saved(args: Args) -> None:
    """Reload the actors saved by a run (--save-model) and evaluate each on num_eval_episodes."""

    def load_policy(saved: Args, env: envs.MultiAgentEnv):  # -> (evaluate, the saved parameters' template)
        evaluate = jax.jit(make_evaluate(saved, env, make_networks(saved, env)[0]), static_argnums=2)
        template = jax.eval_shape(make_train(saved, env).init, jax.random.PRNGKey(0)).best_actor  # shapes only
        return evaluate, template

    runs.evaluate_saved(args, Args, ALGO, load_policy)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.eval_from:
        return evaluate_saved(args)
    check_args(args)
    env = envs.make(args.env_id)
    run_dir, wandb_runs = runs.start_run(args, env, ALGO, ALGO)  # runs/<run>/config.json, wandb, header
    reporter = runs.Reporter(args, env, run_dir, wandb_runs, system=ALGO)
    # All seeds in one compiled call: seed i trains from fold_in(PRNGKey(seed), i).
    train = make_train(args, env, reporter)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(args.seed), i))(jnp.arange(args.num_seeds))
    results = runs.compile_and_run(train, keys, reporter)
    # The absolute metric; under --save-model each seed's actor.
    runs.finish_run(args, run_dir, results, reporter, wandb_runs, ALGO)


if __name__ == "__main__":
    runs.cli(main)
