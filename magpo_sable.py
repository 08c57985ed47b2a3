"""MAGPO with a recurrent Sable guider (Multi-Agent Guided Policy Optimization, §4), and `--ctce`
for plain Sable.

A centralised, auto-regressive guider μ_φ (Sable: retention across agents and across time) sees
every agent's observation, picks the agents' actions one after another and collects the data;
decentralised learners π_θ (the GRU actor of mappo.py, one set of parameters shared by all agents,
each on its own observation) are what gets deployed and evaluated. One update is the paper's four
steps (§4.1):
  1. COLLECT TRAJECTORIES: the guider acts (`Guider.act`); the learner's GRU is stepped alongside
     so that its stored hidden states match the data it is trained on.
  2. UPDATE NETWORK, `guider_objective` (Eq. 8-9): PPO with a double clip that keeps μ/π of the
     taken action within [1/δ, δ], plus KL(μ‖π) where that ratio left it (the mask m), plus the
     value loss and an entropy bonus. The guider's values are the only critic.
  3. UPDATE NETWORK, `actor_objective` (Eq. 10-11): the learner moves towards the guider, KL(μ‖π),
     plus λ times PPO-clip with ratio π/μ_old on the guider's advantages.
  4. Backtracking: no parameter copy; the constraint of step 2 pulls the guider back to what the
     learners can follow (as the released code does it).

    python magpo_sable.py --env-id rware-tiny-4ag --delta 1.2 --lam 2
    python magpo_sable.py --env-id coordsum-3x10 --preset paper    # the paper's tuned configuration
    python magpo_sable.py --env-id coordsum-3x10 --ctce            # plain Sable (Table 1's column)

The whole run, all seeds, is one compiled `jax.jit(jax.vmap(train))` call. At each of `num_evals`
checkpoints the learner plays `num_eval_episodes` fresh episodes on local observations (the guider's
centralised return is logged beside it as a diagnostic); at the end the best checkpoint is
re-evaluated on 10x as many episodes (the paper's absolute metric). Results stream to
`runs/<run-name>/` as they happen.

Differs from mappo.py in: the guider network (Sable) replaces the critic and collects the data;
the rollout steps the learner's GRU beside it; the loss is Eq. 8-11; `--ctce` trains the guider
alone with plain PPO and evaluates it.

Shapes: S seeds, T rollout steps, E envs, A agents, D observation features, K actions, H GRU width,
B = E*A sequences fed to the GRU at once, C chunk length, L = C*A retention tokens (time-major,
agents inner), M embedding width, nh retention heads of width hs = M/nh, nb blocks.
Symbols: μ_φ -> guider, π_θ -> actor, δ -> delta, λ -> lam, ε -> clip_eps, m -> mask, κ -> decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.linen.initializers import constant, orthogonal

import envs
import runs
from runs import ArgError  # check_args' errors: one line on stderr, exit code 2
from runs import TanhNormal  # Mava's continuous policy: a distribution, as distrax.Categorical is

ALGO = "magpo_sable"


def system_name(args: Args) -> str:
    """The method's name in results and in the paper's tables: MAGPO, or Sable under --ctce."""
    return "sable" if args.ctce else "magpo"


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

    # --- MAGPO / Sable ---
    delta: float = 1.5
    """δ of Eq. 8-9 (> 1): the guider's probability of the taken action stays within [1/δ, δ] times the learner's"""
    lam: float = 1.0
    """λ of Eq. 10 (>= 0): weight of the learner's PPO term beside its KL to the guider (not the GAE lambda)"""
    ctce: bool = False
    """train Sable alone with plain PPO and evaluate its centralised joint policy (Table 1's Sable column)"""
    embed_dim: int = 64
    """Sable's embedding width M"""
    n_head: int = 1
    """retention heads per retention layer (each with its own decay rate κ)"""
    n_block: int = 1
    """encoder blocks, and as many decoder blocks"""
    decay_scaling_factor: float = 0.8
    """scales every head's retention decay κ (in [0, 1]; 0 forgets the previous steps entirely)"""
    microbatch_size: Annotated[int | None, runs.default_is(
        "16 under --ctce on the CPU, else the whole minibatch")] = None
    """sequences per gradient pass: each minibatch's gradient is the mean of passes over this many of its
    sequences (the same gradient, in pieces that fit the CPU's caches or a GPU's memory; the gcd with
    the minibatch's size is used, so that the passes are equal)"""
    shuffle_agents: bool = False
    """NOTE(paper vs official code): reorder the agents of the whole batch by one random permutation per PPO
    epoch, as the released code does (rec_magpo.py:450-451; the paper does not say). Default: the rollout's
    order, as the paper's text reads, which scored higher at 1M steps (docs/fidelity.md L7)"""
    stale_epoch_memory: bool = False
    """NOTE(paper vs official code): from the 2nd PPO epoch on, replay each sequence from another sequence's
    stored guider memory, as the released code does (a bug there: rec_magpo.py:443-471; `next_memory_index`).
    Default: each sequence from its own, as the paper describes the algorithm (docs/fidelity.md L8)"""
    update_batch_size: int = 1
    """NOTE(paper vs official code): the released code's `update_batch_size` (2 in every run: its 64 envs per
    batch are our 128): this many equal groups of environments that share every random key, with advantages
    normalised per group (rec_magpo.py:283, :643-665; `group_minibatches`). 1: one batch (docs/fidelity.md L9)"""

    @property
    def chunk_size(self) -> int:
        return self.recurrent_chunk_size or self.rollout_length

    @property
    def minibatch_sequences(self) -> int:
        return self.num_envs * (self.rollout_length // self.chunk_size) // self.num_minibatches

    @property
    def microbatch_sequences(self) -> int:
        # (performance, not the algorithm: skip on a first read)
        # Measured on a 2-core CPU (docs/speed.md): the transformer alone trains 1.1-1.6x faster in passes of
        # 16 sequences, whose activations stay in cache; the learner's GRU steps fastest on the widest batch.
        default = 16 if self.ctce and jax.default_backend() == "cpu" else self.minibatch_sequences
        return math.gcd(self.microbatch_size or default, self.minibatch_sequences)


def check_args(args: Args) -> None:
    # the shared flags (finite, positive, a batch that splits as they say), and these sizes too
    runs.check_run_args(args, positive=("microbatch_size", "embed_dim", "n_head", "n_block"))
    if not args.delta > 1:
        raise ArgError(f"--delta must be greater than 1 (the guider is kept within [1/delta, delta]), got {args.delta}")
    if not args.lam >= 0:
        raise ArgError(f"--lam must be non-negative, got {args.lam}")
    if args.embed_dim % (2 * args.n_head):
        raise ArgError(f"--embed-dim {args.embed_dim} must be an even multiple of --n-head {args.n_head}")
    if (args.embed_dim // args.n_head) % args.n_head:  # Mava's group norm: n_head groups in every head
        raise ArgError(f"--embed-dim {args.embed_dim} / --n-head {args.n_head} must be a multiple of --n-head")
    if not 0 <= args.decay_scaling_factor <= 1:
        raise ArgError(f"--decay-scaling-factor must lie in [0, 1], got {args.decay_scaling_factor}")

def apply_preset(args: Args, explicit: set[str]) -> Args:
    """The paper's tuned values for this task and method (the `magpo` rows, or under --ctce the
    `sable` rows), under every explicitly given flag."""
    return runs.preset_values(args, runs.paper_row(args, system_name(args)), explicit)


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


# (performance, not the algorithm: skip on a first read) flat_matmul and Dense are x @ w and
# nn.Dense, laid out for a faster backward on the CPU.
def flat_matmul(x, w):
    """x (..., F) @ w (F, G) with all leading axes flattened into one. Same numbers as `x @ w`, but
    XLA:CPU then computes the weight gradient as one matrix product; on (..., A, F) it first copies
    the cotangent into a layout with the small agent axis innermost (the update runs ~2x slower)."""
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[-1])


class Dense(nn.Dense):
    """nn.Dense through `flat_matmul` (same parameters, same numbers, a faster backward on the CPU)."""

    def __call__(self, x):
        return super().__call__(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], self.features)


class SableHidden(NamedTuple):
    """Retention states, each (E, nb, nh, hs, hs): one per block and head, carried across steps."""

    encoder: jax.Array
    decoder_self: jax.Array  # the decoder's retention over the actions chosen so far
    decoder_cross: jax.Array  # the decoder's retention from the observations to those actions


def decay_rates(args: Args) -> tuple[float, ...]:
    """κ per head: Sable's multi-scale decays 1 - 2^-5 ... 1 - 2^-9, times --decay-scaling-factor."""
    rates = 1.0 - np.exp(np.linspace(math.log(1 / 32), math.log(1 / 512), args.n_head))
    return tuple(float(r) * args.decay_scaling_factor for r in rates)


def positional_encoding(step_count: jax.Array, width: int) -> jax.Array:
    """Sinusoidal encoding of each token's step within its episode, (...,) -> (..., width)."""
    frequencies = jnp.exp(jnp.arange(0, width, 2) * (-math.log(10000.0) / width))
    angles = step_count[..., None].astype(jnp.float32) * frequencies
    return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(*step_count.shape, width)


class SwiGLU(nn.Module):
    """Gated feed-forward layer, zero-initialised as in Sable (each block starts as the identity)."""

    width: int

    @nn.compact
    def __call__(self, x):
        w_gate, w_linear, w_out = (self.param(n, nn.initializers.zeros, (self.width, self.width))
                                   for n in ("w_gate", "w_linear", "w_out"))
        return flat_matmul(nn.swish(flat_matmul(x, w_gate)) * flat_matmul(x, w_linear), w_out)


def block_steps(steps: int, num_agents: int, tokens: int = 64) -> int:
    """Steps per block of the chunkwise retention: the largest divisor of `steps` whose block holds
    at most `tokens` tokens (at least one step)."""
    return max(s for s in range(1, steps + 1) if steps % s == 0 and (s * num_agents <= tokens or s == 1))


class Retention(nn.Module):
    """Multi-scale retention (RetNet) as Sable uses it, over tokens ordered time-major with the A
    agents of a step inner. Token n of step t(n) reads token m with weight κ^(t(n)-t(m)) when both
    belong to the same episode and t(m) <= t(n) (and, in the `masked` decoder, m <= n: an agent sees
    only the agents before it at its own step). Two forms that must agree (a test checks it):

    - chunkwise (`chunkwise=True`): a whole chunk of C steps at once, for training, from the
      state carried into the chunk; the decay matrix is built from a cumulative sum of the reset
      flags (no loop over steps), and resets cut both the matrix and the carried state;
    - recurrent (`chunkwise=False`): the tokens of one step (all agents in the encoder; one agent
      at a time in the decoder), for acting, from a state the caller has already decayed by κ
      (or zeroed at a reset) once for this step.
    """

    width: int
    n_head: int
    decay: tuple[float, ...]  # κ per head
    num_agents: int
    masked: bool

    def setup(self):
        init = nn.initializers.normal(stddev=1 / self.width)
        shape = (self.width, self.width)  # all heads' projections side by side
        self.w_q, self.w_k, self.w_v, self.w_g, self.w_o = (
            self.param(n, init, shape) for n in ("w_q", "w_k", "w_v", "w_g", "w_o"))
        # NOTE(paper vs official code): Mava's group norm (flax GroupNorm(num_groups=n_head) applied
        # to each head's hs features) normalises groups of hs / n_head features inside a head, with
        # one scale and bias of hs entries shared by all heads; matched here (n_head = 1: per head).
        head_size = self.width // self.n_head
        self.norm_scale = self.param("norm_scale", nn.initializers.ones, (head_size,))
        self.norm_bias = self.param("norm_bias", nn.initializers.zeros, (head_size,))

    def heads(self, x):  # (B, L, M) -> (B, L, nh, hs)
        return x.reshape(*x.shape[:-1], self.n_head, self.width // self.n_head)

    def __call__(self, x, query, hidden, reset, step_count, chunkwise):
        """x (B, L, M) gives the keys and values, query (B, L, M) the queries (x itself for
        self-retention); hidden (B, nh, hs, hs); reset (B, C) per step (chunkwise
        only); step_count (B, C) steps since the episode began, for the positional encoding.
        Returns the output (B, L, M) and the state after the last token."""
        B, L, _ = x.shape
        steps = L // self.num_agents
        position = positional_encoding(jnp.repeat(step_count, L // step_count.shape[1], axis=1), self.width)
        # The encoded position is added to keys, values and queries; the output gate reads the
        # encoded keys too (Mava re-binds `key` to key + pe before its gate `x = key`).
        keyed = x + position
        if query is x:  # self-retention: one matrix product for q, k and v
            qkv = flat_matmul(keyed, jnp.concatenate([self.w_q, self.w_k, self.w_v], 1))
            q, k, v = jnp.split(qkv, 3, axis=-1)
        else:  # cross-retention: one for k and v
            q = flat_matmul(query + position, self.w_q)
            k, v = jnp.split(flat_matmul(keyed, jnp.concatenate([self.w_k, self.w_v], 1)), 2, axis=-1)
        q, k, v = self.heads(q), self.heads(k), self.heads(v)
        kappa = jnp.asarray(self.decay, jnp.float32)  # (nh,)
        if not chunkwise:
            hidden = hidden + jnp.einsum("blhd,blhe->bhde", k, v)
            retained = jnp.einsum("blhd,bhde->blhe", q, hidden)
            return self.output(keyed, retained), hidden
        # RetNet's chunkwise form, in blocks of s steps (about 64 tokens): inside a block a product
        # masked by the decay matrix, across blocks the state carries the past, so the work grows
        # linearly with the chunk length. Decay matrices come from a cumulative sum of the resets.
        A, nh, hs = self.num_agents, self.n_head, self.width // self.n_head
        s = block_steps(steps, A)
        # J blocks of s steps, P tokens in each; in the einsums j is a block, n, m and l are tokens of one
        J, P = steps // s, s * A
        q, k, v = (y.reshape(B, J, P, nh, hs) for y in (q, k, v))
        t = jnp.arange(P) // A  # the step of each token within its block
        episode = jnp.cumsum(reset.reshape(B, J, s), axis=2)[:, :, t]  # (B, J, P): episodes since the block start
        gap = t[:, None] - t[None, :]  # (P, P): t(n) - t(m)
        visible = (gap >= 0) & (episode[..., :, None] == episode[..., None, :])  # (B, J, P, P)
        if self.masked:
            visible = visible & jnp.tril(jnp.ones((P, P), bool))
        decay = jnp.where(visible[:, :, None], kappa[:, None, None] ** jnp.maximum(gap, 0), 0.0)  # (B, J, nh, P, P)
        inner = jnp.einsum("bjhnm,bjmhe->bjnhe", jnp.einsum("bjnhd,bjmhd->bjhnm", q, k) * decay, v)
        # What each block adds to the state after it (k^T v decayed to its last step: the last token's
        # row of the decay matrix), and whether the state entering it survives it (no reset inside).
        added = jnp.einsum("bjlhd,bjhl,bjlhe->bjhde", k, decay[..., -1, :], v)
        kept = (kappa ** s) * (episode[:, :, -1:] == 0)  # (B, J, nh)

        def through_block(state, xs):
            added, kept = xs
            return state * kept[..., None, None] + added, state

        hidden, entering = jax.lax.scan(through_block, hidden, (jnp.moveaxis(added, 1, 0), jnp.moveaxis(kept, 1, 0)))
        # The state entering a block reaches its step t decayed by κ^(t+1), up to the block's first reset.
        xi = jnp.where((episode == 0)[..., None], kappa ** (t + 1.0)[:, None], 0.0)  # (B, J, P, nh)
        cross = jnp.einsum("bjlhd,bjhde->bjlhe", q, jnp.moveaxis(entering, 0, 1)) * xi[..., None]
        return self.output(keyed, (inner + cross).reshape(B, L, nh, hs)), hidden

    def output(self, keyed, retained):
        """Group normalisation of the retained values (see `setup`), the swish gate on the encoded
        keys, and the output projection. retained (B, L, nh, hs)."""
        groups = retained.reshape(*retained.shape[:-1], self.n_head, -1)  # (B, L, nh, groups, hs / groups)
        mean = groups.mean(-1, keepdims=True)
        var = groups.var(-1, keepdims=True)
        retained = ((groups - mean) * jax.lax.rsqrt(var + 1e-6)).reshape(retained.shape)
        retained = (retained * self.norm_scale + self.norm_bias).reshape(keyed.shape)
        return flat_matmul(nn.swish(flat_matmul(keyed, self.w_g)) * retained, self.w_o)


class EncodeBlock(nn.Module):
    width: int
    n_head: int
    decay: tuple[float, ...]
    num_agents: int

    @nn.compact
    def __call__(self, x, hidden, reset, step_count, chunkwise):
        retained, hidden = Retention(self.width, self.n_head, self.decay, self.num_agents, masked=False)(
            x, x, hidden, reset, step_count, chunkwise)
        x = nn.RMSNorm()(x + retained)
        return nn.RMSNorm()(x + SwiGLU(self.width)(x)), hidden


class DecodeBlock(nn.Module):
    width: int
    n_head: int
    decay: tuple[float, ...]
    num_agents: int

    @nn.compact
    def __call__(self, x, obs_rep, hidden, reset, step_count, chunkwise):
        hidden_self, hidden_cross = hidden
        retention = lambda: Retention(self.width, self.n_head, self.decay, self.num_agents, masked=True)
        # self-retention over the actions already chosen
        retained, hidden_self = retention()(x, x, hidden_self, reset, step_count, chunkwise)
        x = nn.RMSNorm()(x + retained)
        # cross-retention: each agent's observation (query) reads those actions (keys, values)
        retained, hidden_cross = retention()(x, obs_rep, hidden_cross, reset, step_count, chunkwise)
        y = nn.RMSNorm()(obs_rep + retained)
        return nn.RMSNorm()(y + SwiGLU(self.width)(y)), (hidden_self, hidden_cross)


class Guider(nn.Module):
    """Recurrent Sable (Mahjoub et al. 2025): an encoder with retention over all agents'
    observations gives each agent's value; a decoder picks the agents' actions one after another,
    each conditioned on the actions already chosen at this step. Retention carries memory across
    steps (decayed by κ per step, reset at episode starts)."""

    num_agents: int
    num_actions: int
    continuous: bool
    width: int
    n_head: int
    n_block: int
    decay: tuple[float, ...]

    def setup(self):
        M, dims = self.width, (self.width, self.n_head, self.decay, self.num_agents)
        self.obs_encoder = nn.Sequential([nn.RMSNorm(), Dense(M, use_bias=False, kernel_init=orthogonal(math.sqrt(2))),
                                          nn.gelu])
        self.encoder_norm = nn.RMSNorm()
        self.encoder_blocks = [EncodeBlock(*dims) for _ in range(self.n_block)]
        self.value_head = nn.Sequential([Dense(M, kernel_init=orthogonal(math.sqrt(2))), nn.gelu, nn.RMSNorm(),
                                         Dense(1, kernel_init=orthogonal(0.01))])
        # a bias for continuous actions only, as Mava's (their start token is zeros)
        self.action_encoder = nn.Sequential([Dense(M, use_bias=self.continuous, kernel_init=orthogonal(math.sqrt(2))),
                                             nn.gelu])
        self.decoder_norm = nn.RMSNorm()
        self.decoder_blocks = [DecodeBlock(*dims) for _ in range(self.n_block)]
        self.policy_torso = nn.Sequential([Dense(M, kernel_init=orthogonal(math.sqrt(2))), nn.gelu, nn.RMSNorm()])
        self.action_head = ActionHead(self.num_actions, self.continuous)

    def encode(self, obs, hidden, reset, step_count, chunkwise):  # obs (B, L, D), hidden (B, nb, nh, hs, hs)
        x, new_hidden = self.obs_encoder(obs), []
        for i, block in enumerate(self.encoder_blocks):
            x, h = block(self.encoder_norm(x), hidden[:, i], reset, step_count, chunkwise)
            new_hidden.append(h)
        return self.value_head(x)[..., 0], x, jnp.stack(new_hidden, 1)

    def decode(self, previous_action, obs_rep, hidden, reset, step_count, chunkwise):
        x, new_hidden = self.decoder_norm(self.action_encoder(previous_action)), []
        for i, block in enumerate(self.decoder_blocks):
            x, h = block(x, obs_rep, (hidden[0][:, i], hidden[1][:, i]), reset, step_count, chunkwise)
            new_hidden.append(h)
        return self.policy_torso(x), tuple(jnp.stack(h, 1) for h in zip(*new_hidden))

    def action_token(self, action):
        """What the decoder reads about an agent's action, as Mava's decoders: [start flag, one-hot
        action] (discrete); the squashed action itself, what the env got (continuous). The first agent
        of a step reads the start token."""
        if self.continuous:
            return action
        one_hot = jax.nn.one_hot(action, self.num_actions)
        return jnp.concatenate([jnp.zeros_like(one_hot[..., :1]), one_hot], axis=-1)

    def start_token(self, shape):
        """The start flag alone (discrete); zeros (continuous: Mava's, its action encoder has a bias)."""
        if self.continuous:
            return jnp.zeros((*shape, self.num_actions))
        return jnp.zeros((*shape, self.num_actions + 1)).at[..., 0].set(1.0)

    def __call__(self, hidden: SableHidden, obs, action, reset, step_count, action_mask):
        """Training: the chunkwise form over C steps, teacher-forced on the taken actions.
        obs (C, B, A, D), action (C, B, A[, K]), reset and step_count (C, B), action_mask (C, B, A, K)
        -> value (C, B, A) and the policy of each agent given the actions before it, batch (C, B, A)."""
        C, B, A = obs.shape[:3]
        tokens = lambda x: jnp.swapaxes(x, 0, 1).reshape(B, C * A, *x.shape[3:])  # (C, B, A, ...) -> (B, L, ...)
        steps = lambda x: jnp.swapaxes(x.reshape(B, C, A, *x.shape[2:]), 0, 1)  # (B, L, ...) -> (C, B, A, ...)
        reset, step_count = reset.T, step_count.T
        value, obs_rep, _ = self.encode(tokens(obs), hidden.encoder, reset, step_count, chunkwise=True)
        previous = jnp.concatenate([self.start_token((C, B, 1)), self.action_token(action)[:, :, :-1]], axis=2)
        x, _ = self.decode(tokens(previous), obs_rep, (hidden.decoder_self, hidden.decoder_cross), reset, step_count,
                           chunkwise=True)
        return steps(value), self.action_head(steps(x), action_mask)

    def begin_step(self, hidden: SableHidden, reset) -> SableHidden:
        """Acting: zero the states of envs whose episode starts now, then decay them once for this step."""
        kappa = jnp.asarray(self.decay, jnp.float32)[None, None, :, None, None]
        keep = ~reset[:, None, None, None, None]
        return jax.tree_util.tree_map(lambda h: jnp.where(keep, h, 0.0) * kappa, hidden)

    def value(self, hidden: SableHidden, obs, reset, step_count):
        """Acting: each agent's value for one step, obs (B, A, D) -> (B, A)."""
        hidden = self.begin_step(hidden, reset)
        return self.encode(obs, hidden.encoder, None, step_count[:, None], chunkwise=False)[0]

    def act(self, hidden: SableHidden, obs, reset, step_count, action_mask, key, greedy=False):
        """Acting: one step of B envs, the recurrent form. The agents pick their actions one after
        another, each decoder pass reading the actions chosen before it.
        obs (B, A, D), reset and step_count (B,), action_mask (B, A, K)
        -> action (B, A[, K]), log_prob (B, A), value (B, A), the new hidden state."""
        hidden = self.begin_step(hidden, reset)
        step_count = step_count[:, None]
        value, obs_rep, encoder_hidden = self.encode(obs, hidden.encoder, None, step_count, chunkwise=False)
        decoder_hidden = (hidden.decoder_self, hidden.decoder_cross)
        token, actions, log_probs = self.start_token((obs.shape[0], 1)), [], []
        for i in range(self.num_agents):
            x, decoder_hidden = self.decode(token, obs_rep[:, i:i + 1], decoder_hidden, None, step_count,
                                            chunkwise=False)
            pi = self.action_head(x[:, 0], action_mask[:, i])
            key, sample_key = jax.random.split(key)
            action = pi.mode() if greedy else pi.sample(seed=sample_key)
            actions.append(action)
            log_probs.append(pi.log_prob(action))
            token = self.action_token(action)[:, None]
        hidden = SableHidden(encoder_hidden, *decoder_hidden)
        return jnp.stack(actions, 1), jnp.stack(log_probs, 1), value, hidden


def act_in_groups(guider: Guider, params, hidden, obs, reset, step_count, action_mask, key, groups):
    """`Guider.act` on all E environments; with `groups` G > 1 (--update-batch-size) its G groups of E/G
    environments draw their sampling noise from one key, as the released code's update batches do."""
    if groups == 1:
        return guider.apply(params, hidden, obs, reset, step_count, action_mask, key, method=Guider.act)
    split = lambda x: x.reshape(groups, x.shape[0] // groups, *x.shape[1:])
    acted = jax.vmap(lambda *xs: guider.apply(params, *xs, key, method=Guider.act))(
        *jax.tree_util.tree_map(split, (hidden, obs, reset, step_count, action_mask)))
    return jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[2:]), acted)


def zero_guider_hidden(args: Args, batch: int) -> SableHidden:
    hs = args.embed_dim // args.n_head
    zeros = jnp.zeros((batch, args.n_block, args.n_head, hs, hs))
    return SableHidden(zeros, zeros, zeros)


def map_policy(pi, fn):
    """The same policy with fn applied to its parameters (reshaping its batch axes, stop_gradient)."""
    if isinstance(pi, distrax.Categorical):
        return distrax.Categorical(logits=fn(pi.logits))
    return TanhNormal(fn(pi.loc), fn(pi.scale))


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
    obs: jax.Array  # (E, A, D) each agent's own observation: the learner's input, and the guider's tokens
    reset: jax.Array  # (E,) this observation starts an episode: resets the learner's GRU and the guider's memory
    step_count: jax.Array  # (E,) steps since the episode began (Sable encodes it; MAT does not read it)
    action_mask: jax.Array  # (E, A, K)
    action: jax.Array  # (E, A) or (E, A, K) for continuous: the guider's action
    log_prob: jax.Array  # (E, A) under the behaviour policy, the guider μ_old (each agent given those before it)
    actor_log_prob: jax.Array  # (E, A) the learner's log-prob of that action during the rollout
    value: jax.Array  # (E, A) the guider's value
    reward: jax.Array  # (E, A)
    done: jax.Array  # (E,) the episode ended with this step: no bootstrap through it (GAE)
    episode_return: jax.Array  # (E,) nonzero only where done
    episode_metric: jax.Array  # (E,)


class Params(NamedTuple):
    actor: Any
    guider: Any


class OptStates(NamedTuple):
    actor: Any
    guider: Any


class TrainState(NamedTuple):  # what the gradient steps change
    params: Params
    opt_states: OptStates


class Batch(NamedTuple):  # what the update trains on: the rollout as (T//C, C, E, ...), a minibatch as (C, n, ...)
    traj: Transition
    advantages: jax.Array  # (..., A) the guider's
    targets: jax.Array  # (..., A) the guider's value targets


class Hidden(NamedTuple):  # the recurrent states a sequence of the update starts from
    actor: jax.Array  # (n*A, H); stored as (T//C, E*A, H)
    guider: Any  # (n, ...); stored as (T//C, E, ...)


class RunnerState(NamedTuple):
    params: Params
    opt_states: OptStates
    env_state: envs.EnvState  # batched over E
    timestep: envs.TimeStep  # the latest, batched over E
    actor_hidden: jax.Array  # (E*A, H)
    guider_hidden: Any  # the guider's memory across steps, batched over E (zero_guider_hidden)
    key: jax.Array
    best_actor: Any  # parameters of the deployed policy (the learner; the guider under --ctce) at the best checkpoint
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


def group_minibatches(key, num_sequences, num_envs, groups, num_minibatches):
    """The sequences n = k * E + e of each minibatch, (num_minibatches, num_sequences // num_minibatches).
    With groups G > 1 (--update-batch-size) the environments form G equal groups e = g * E/G + e' that draw
    the same random order, as the released code's update batches share one key: each minibatch holds the
    same positions of every group, group after group. G = 1: one permutation of all sequences."""
    group_envs = num_envs // groups
    local = jax.random.permutation(key, num_sequences // groups).reshape(num_minibatches, -1)  # k * E/G + e'
    return jnp.concatenate([(local // group_envs) * num_envs + g * group_envs + local % group_envs
                            for g in range(groups)], axis=1)


def normalize_groups(x, groups):
    """`normalize` within each of the `groups` equal parts of axis 1 (a minibatch from `group_minibatches`):
    the released code normalises its advantages inside each update batch's minibatch."""
    if groups == 1:
        return normalize(x)
    parts = x.reshape(x.shape[0], groups, -1, *x.shape[2:])
    return jax.vmap(normalize, in_axes=1, out_axes=1)(parts).reshape(x.shape)


def keep_best(best_params, best_return, params, mean_return):
    """The best evaluation checkpoint so far, for the absolute metric. Ties go to the later
    checkpoint, as in Mava (rec_magpo.py replaces its best with `<=`)."""
    better = (mean_return >= best_return) & jnp.isfinite(runs.max_abs(params))  # never a diverged policy
    best_params = jax.tree_util.tree_map(lambda b, p: jnp.where(better, p, b), best_params, params)
    return best_params, jnp.where(better, mean_return, best_return)


# The released code's update epochs, reproduced under --shuffle-agents and --stale-epoch-memory
# (NOTE(paper vs official code): the paper describes neither). Each epoch it draws one permutation of the
# environments and one of the agents (rec_magpo.py:439-451, rec_sable.py:263-276, mat.py:241-253).
def reorder_agents(batch, actor_hidden, order):
    """A gathered batch with its agents in `order` (--shuffle-agents), as rec_magpo.py:451 takes `agent_perm`
    on the agent axis of everything: each (C, n, A, ...) array on axis 2 (the (C, n) ones are per environment)
    and the learner's stored states (n, A, H) on axis 1. The guider's retention states have no agent axis."""
    batch = jax.tree_util.tree_map(lambda x: x if x.ndim == 2 else jnp.take(x, order, axis=2), batch)
    return batch, jnp.take(actor_hidden, order, axis=1)


def next_memory_index(memory_index, order):
    """Which stored guider memory each sequence replays from in the next epoch (--stale-epoch-memory). The
    released code gathers trajectories and start memories with one permutation p per epoch (rec_magpo.py:443-447)
    but stores the gathered memories back beside the ungathered trajectories (:471): sequence i, replayed from
    memory index[i] this epoch, replays from index[p[i]] in the next. `order`: this epoch's p."""
    return memory_index[order]


# MAGPO's two objectives (§4.1). Symbols: μ = guider, π = actor (the learner), μ_old = the guider that
# collected the data; log_prob = log μ(a|·), actor_log_prob = log π(a|o), old_log_prob = log μ_old(a|·)
# of the taken action a, each agent's μ conditioned on the actions of the agents before it;
# advantages Â from the guider's values; kl per sample, computed by the caller with the other network
# held fixed; delta = δ, lam = λ, clip_eps = ε.
def guider_objective(log_prob, actor_log_prob, old_log_prob, advantages, kl, delta, clip_eps):
    """Eq. 8-9, to minimise: -E[min(r Â, clip(r', 1-ε, 1+ε) Â)] and the masked KL E[m KL(μ‖π)], with
    r = μ/μ_old and r' = (π/μ_old) clip(μ/π, 1/δ, δ). With δ -> ∞ this is plain PPO and the KL term vanishes.
    Returns (ppo_loss, kl_loss, info)."""
    log_gap = log_prob - actor_log_prob  # log μ/π of the taken action
    log_delta = jnp.log(delta)
    log_ratio = log_prob - old_log_prob
    ratio = jnp.exp(log_ratio)
    # Eq. 9 inner clip: bound μ/π to [1/δ, δ] in log space, then re-base on μ_old. Outside the bound r'
    # no longer depends on μ, so the min gives the guider no gradient that pushes it further away.
    constrained = jnp.exp(jnp.clip(log_gap, -log_delta, log_delta) + actor_log_prob - old_log_prob)
    surrogate = jnp.minimum(ratio * advantages, jnp.clip(constrained, 1.0 - clip_eps, 1.0 + clip_eps) * advantages)
    # Eq. 8's mask m: the KL pulls the guider back only where μ/π left (1/δ, δ)
    mask = jnp.abs(log_gap) > log_delta
    info = {"magpo/mask_frac": mask.mean(), "magpo/abs_log_ratio": jnp.abs(log_gap).mean(),
            "loss/approx_kl": ((ratio - 1.0) - log_ratio).mean(),
            "loss/clip_frac": (jnp.abs(constrained - 1.0) > clip_eps).mean()}
    return -surrogate.mean(), (mask * kl).mean(), info


def actor_objective(log_prob, old_log_prob, advantages, kl, lam, clip_eps):
    """Eq. 10-11, to minimise: E[KL(μ‖π)] + λ · PPO-clip with ratio π/μ_old on the guider's advantages.
    Returns (loss, ppo_loss, kl_loss).

    NOTE(paper vs official code): Eq. 10 writes D_KL(π, μ); the released code, which produced the
    paper's numbers, computes KL(μ‖π) (the caller passes that, the guider held fixed)."""
    ppo_loss, _, _ = ppo_clip_objective(log_prob, old_log_prob, advantages, clip_eps)
    kl_loss = kl.mean()
    return kl_loss + lam * ppo_loss, ppo_loss, kl_loss


# ==================================================================================================
# Training
# ==================================================================================================
def make_networks(args: Args, env: envs.MultiAgentEnv):
    actor = Actor(env.num_actions, env.continuous, args.hidden_dim)
    guider = Guider(env.num_agents, env.num_actions, env.continuous, args.embed_dim, args.n_head, args.n_block,
                    decay_rates(args))
    return actor, guider


def make_optimizer(args: Args):
    return optax.chain(optax.clip_by_global_norm(args.max_grad_norm), optax.adam(args.lr, eps=1e-5))


def make_evaluate(args: Args, env: envs.MultiAgentEnv, actor: Actor, guider: Guider):
    """evaluate(params, key, num_episodes, centralised) -> (returns, metrics), each (num_episodes,):
    one episode on each of num_episodes fresh envs, played by the actor on local observations only
    (params = actor parameters), or with centralised=True by the guider's joint policy."""

    def evaluate(params, key, num_episodes, centralised=False):
        B = num_episodes * env.num_agents
        reset_key, key = jax.random.split(key)
        env_state, timestep = jax.vmap(env.reset)(jax.random.split(reset_key, num_episodes))
        hidden = zero_guider_hidden(args, num_episodes) if centralised else jnp.zeros((B, args.hidden_dim))
        finished = jnp.zeros((num_episodes,), bool)
        returns = jnp.zeros((num_episodes,))
        metrics = jnp.zeros((num_episodes,))

        def step(carry, step_key):
            env_state, timestep, hidden, finished, returns, metrics = carry
            if centralised:
                action, _, _, hidden = guider.apply(params, hidden, timestep.obs, timestep.reset, env.position(env_state),
                                                    timestep.action_mask, step_key, args.greedy_eval, method=Guider.act)
            else:
                ts = jax.tree_util.tree_map(lambda x: x[None], timestep)
                reset = jnp.repeat(ts.reset, env.num_agents, axis=1)
                hidden, pi = actor.apply(params, hidden, agents_to_batch(ts.obs), reset,
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
    actor, guider = make_networks(args, env)
    optimizer = make_optimizer(args)
    evaluate = make_evaluate(args, env, actor, guider)
    E, A, T, C, H = args.num_envs, env.num_agents, args.rollout_length, args.chunk_size, args.hidden_dim
    def deployed(params: Params):
        return params.guider if args.ctce else params.actor

    def init(key) -> RunnerState:  # the runner state before the first update
        # ------------------------------------------------------------------ INIT
        key, actor_key, guider_key, env_key = jax.random.split(key, 4)
        env_state, timestep = jax.vmap(env.reset)(jax.random.split(env_key, E))
        zeros_hidden = jnp.zeros((E * A, H))
        ts1 = jax.tree_util.tree_map(lambda x: x[None], timestep)
        reset1 = jnp.repeat(ts1.reset, A, axis=1)
        actor_params = actor.init(actor_key, zeros_hidden, agents_to_batch(ts1.obs), reset1,
                                  agents_to_batch(ts1.action_mask))
        guider_hidden = zero_guider_hidden(args, E)
        zeros_action = jnp.zeros((1, E, A, env.num_actions)) if env.continuous else jnp.zeros((1, E, A), jnp.int32)
        guider_params = guider.init(guider_key, guider_hidden, ts1.obs, zeros_action, ts1.reset,
                                    env_state.step_count[None], ts1.action_mask)
        params = Params(actor_params, guider_params)
        opt_states = OptStates(optimizer.init(actor_params), optimizer.init(guider_params))
        return RunnerState(params, opt_states, env_state, timestep, zeros_hidden, guider_hidden, key,
                           deployed(params), jnp.float32(-jnp.inf))

    def train(runner: RunnerState, seed_index, first_checkpoint):

        def update(runner: RunnerState, _):
            # ------------------------------------------------------------------ COLLECT TRAJECTORIES
            def env_step(runner: RunnerState, _):
                key, action_key = jax.random.split(runner.key)
                ts = runner.timestep
                step_count = env.position(runner.env_state)
                action, log_prob, value, guider_hidden = act_in_groups(
                    guider, runner.params.guider, runner.guider_hidden, ts.obs, ts.reset, step_count,
                    ts.action_mask, action_key, args.update_batch_size)
                actor_hidden, actor_log_prob = runner.actor_hidden, jnp.zeros_like(log_prob)
                if not args.ctce:
                    # Step the learner's GRU on its own observations, so that the hidden states stored
                    # for the update are the ones its replay reaches (as d2ac38b does: docs/fidelity.md N3).
                    ts1 = jax.tree_util.tree_map(lambda x: x[None], ts)
                    actor_hidden, pi = actor.apply(runner.params.actor, runner.actor_hidden, agents_to_batch(ts1.obs),
                                                   jnp.repeat(ts1.reset, A, axis=1), agents_to_batch(ts1.action_mask))
                    actor_log_prob = batch_to_agents(pi.log_prob(agents_to_batch(action[None])), A)[0]
                env_state, timestep = jax.vmap(env.step)(runner.env_state, env_action(env, action))
                transition = Transition(
                    obs=ts.obs, reset=ts.reset, step_count=step_count, action_mask=ts.action_mask,
                    action=action, log_prob=log_prob, actor_log_prob=actor_log_prob, value=value,
                    reward=timestep.reward, done=timestep.done, episode_return=timestep.episode_return,
                    episode_metric=timestep.episode_metric,
                )
                runner = runner._replace(env_state=env_state, timestep=timestep, actor_hidden=actor_hidden,
                                         guider_hidden=guider_hidden, key=key)
                return runner, transition

            def chunk(runner: RunnerState, _):
                # The recurrent states at the start of each chunk are what the update replays from.
                start_hidden = Hidden(runner.actor_hidden, runner.guider_hidden)
                runner, transitions = jax.lax.scan(env_step, runner, None, C)
                return runner, (transitions, start_hidden)

            runner, (traj_batch, start_hidden) = jax.lax.scan(chunk, runner, None, T // C)
            traj_batch = jax.tree_util.tree_map(lambda x: x.reshape(T, *x.shape[2:]), traj_batch)

            # ------------------------------------------------------------------ CALCULATE ADVANTAGE
            ts = runner.timestep
            last_value = guider.apply(runner.params.guider, runner.guider_hidden, ts.obs, ts.reset,
                                      env.position(runner.env_state), method=Guider.value)
            dones = jnp.repeat(traj_batch.done[..., None], A, axis=-1)
            advantages, targets = compute_gae(traj_batch.reward, traj_batch.value, dones, last_value,
                                              args.gamma, args.gae_lambda)

            # ------------------------------------------------------------------ UPDATE NETWORK
            def loss(params: Params, batch: Batch, hidden: Hidden, entropy_key):
                """Eq. 8-9 for the guider plus Eq. 10-11 for the learner, in one pass: each network's
                terms see the other one through stop_gradient, so the gradients do not mix (--ctce: PPO).
                `batch` may be a microbatch of the minibatch; its advantages are normalised over the whole."""
                traj, advantages, targets = batch.traj, batch.advantages, batch.targets
                value, guider_pi = guider.apply(params.guider, hidden.guider, traj.obs, traj.action, traj.reset,
                                                traj.step_count, traj.action_mask)
                log_prob = guider_pi.log_prob(traj.action)
                entropy = policy_entropy(guider_pi, entropy_key).mean()
                value_loss = clipped_value_loss(value, traj.value, targets, args.clip_eps)
                metrics = {"loss/value": value_loss, "loss/entropy": entropy,
                           # max |ratio - 1|: exactly 0 on an update's first minibatch unless the replay
                           # (hidden states, resets, chunking) is misaligned with the rollout
                           "loss/ratio_dev": jnp.abs(jnp.exp(log_prob - traj.log_prob) - 1.0).max()}
                if args.ctce:  # the guider alone: plain PPO, no learner to stay close to
                    guider_ppo, approx_kl, clip_frac = ppo_clip_objective(log_prob, traj.log_prob, advantages,
                                                                          args.clip_eps)
                    metrics |= {"loss/guider": guider_ppo, "loss/approx_kl": approx_kl, "loss/clip_frac": clip_frac}
                    return guider_ppo - args.ent_coef * entropy + args.vf_coef * value_loss, metrics
                reset = jnp.repeat(traj.reset[..., None], A, axis=-1)
                _, actor_pi = actor.apply(params.actor, hidden.actor, agents_to_batch(traj.obs),
                                          agents_to_batch(reset), agents_to_batch(traj.action_mask))
                actor_pi = map_policy(actor_pi, lambda x: batch_to_agents(x, A))  # batch (C, N, A)
                actor_log_prob = actor_pi.log_prob(traj.action)
                kl_to_actor = guider_pi.kl_divergence(map_policy(actor_pi, jax.lax.stop_gradient))
                kl_to_guider = map_policy(guider_pi, jax.lax.stop_gradient).kl_divergence(actor_pi)
                actor_loss, actor_ppo, actor_kl = actor_objective(actor_log_prob, traj.log_prob, advantages,
                                                                  kl_to_guider, args.lam, args.clip_eps)
                guider_ppo, guider_kl, info = guider_objective(log_prob, jax.lax.stop_gradient(actor_log_prob),
                                                               traj.log_prob, advantages, kl_to_actor, args.delta,
                                                               args.clip_eps)
                metrics |= {"loss/actor": actor_ppo, "loss/kl": actor_kl, "loss/guider": guider_ppo,
                            "loss/guider_kl": guider_kl, **info,
                            "loss/actor_ratio_dev": jnp.abs(jnp.exp(actor_log_prob - traj.actor_log_prob) - 1).max()}
                guider_loss = guider_ppo + guider_kl - args.ent_coef * entropy + args.vf_coef * value_loss
                return guider_loss + actor_loss, metrics

            def minibatch_update(train_state: TrainState, grads: Params) -> TrainState:
                params, opt_states = train_state
                guider_updates, guider_opt = optimizer.update(grads.guider, opt_states.guider)
                guider_params = optax.apply_updates(params.guider, guider_updates)
                actor_params, actor_opt = params.actor, opt_states.actor
                if not args.ctce:
                    actor_updates, actor_opt = optimizer.update(grads.actor, opt_states.actor)
                    actor_params = optax.apply_updates(params.actor, actor_updates)
                return TrainState(Params(actor_params, guider_params), OptStates(actor_opt, guider_opt))

            # Sequence n = k * E + e is env e's k-th chunk: (T, E, ...) is viewed as (T//C, C, E, ...), and
            # only a minibatch's own sequences are ever gathered (no reordered copy of the rollout).
            rollout = jax.tree_util.tree_map(lambda x: x.reshape(T // C, C, E, *x.shape[2:]),
                                             Batch(traj_batch, advantages, targets))

            def sequences(x, indices):  # (T//C, C, E, ...) -> the sequences `indices`, (C, len(indices), ...)
                return jnp.swapaxes(x[indices // E, :, indices % E], 0, 1)

            N = (T // C) * E
            # Stored states (T//C, E*A, H) and (T//C, E, ...) -> (T//C * E, ...), matching the sequence order.
            stored_hidden = Hidden(start_hidden.actor.reshape(N, A, H),
                                   jax.tree_util.tree_map(lambda h: h.reshape(N, *h.shape[2:]), start_hidden.guider))

            def epoch(carry, epoch_key):
                # A new order of the sequences each epoch, cut into minibatches; each minibatch gathers its
                # own (a shuffled copy of the rollout would be most of a run's memory on large views).
                # NOTE(paper vs official code): the released code reorders the agents by one permutation
                # per epoch before the guider's teacher-forced pass, which changes what each decoder step is
                # conditioned on (ratios != 1 from the start), and from the 2nd epoch on replays each
                # trajectory from another one's guider memory, a bug there; --shuffle-agents and
                # --stale-epoch-memory do the same. By default: the rollout's order, each sequence's own memory.
                train_state, memory_index = carry  # memory_index[n]: the stored guider memory sequence n starts from
                minibatches = group_minibatches(epoch_key, N, E, args.update_batch_size, args.num_minibatches)
                # a key per minibatch for a continuous guider's entropy estimate (unused if discrete)
                entropy_keys = jax.random.split(jax.random.fold_in(epoch_key, 1), args.num_minibatches)
                shuffled = jax.random.permutation(jax.random.fold_in(epoch_key, 2), A)  # the agents' order this epoch
                agent_order = shuffled if args.shuffle_agents else None

                def gather_and_update(train_state: TrainState, xs):
                    indices, entropy_key = xs
                    # (performance, not the algorithm: skip on a first read) microbatching.
                    # The minibatch's gradient is the mean of its equal microbatches' gradients (every
                    # loss term is a mean over samples, the advantages are normalised over the whole
                    # minibatch): the same gradient, in pieces whose activations can stay in cache. (A
                    # continuous guider's entropy estimate draws its samples per microbatch: the same
                    # estimator with other draws.)
                    micro_indices = indices.reshape(-1, args.microbatch_sequences)
                    micro_keys = jax.random.split(entropy_key, len(micro_indices))
                    advantages = normalize_groups(sequences(rollout.advantages, indices), args.update_batch_size)
                    micro_advantages = jnp.moveaxis(advantages.reshape(C, *micro_indices.shape, A), 1, 0)

                    def microbatch_gradient(params: Params, micro):
                        micro_indices, advantages, micro_key = micro
                        batch = Batch(jax.tree_util.tree_map(lambda x: sequences(x, micro_indices), rollout.traj),
                                      advantages, sequences(rollout.targets, micro_indices))
                        memory = memory_index[micro_indices] if args.stale_epoch_memory else micro_indices
                        guider_hidden = jax.tree_util.tree_map(lambda h: jnp.take(h, memory, axis=0), stored_hidden.guider)
                        actor_hidden = jnp.take(stored_hidden.actor, micro_indices, axis=0)  # (n, A, H)
                        if agent_order is not None:
                            batch, actor_hidden = reorder_agents(batch, actor_hidden, agent_order)
                        hidden = Hidden(actor_hidden.reshape(-1, H), guider_hidden)
                        return jax.grad(loss, has_aux=True)(params, batch, hidden, micro_key)

                    grads, losses = runs.mean_gradient(microbatch_gradient, train_state.params,
                                                       (micro_indices, micro_advantages, micro_keys))
                    losses = {k: v.max() if k.endswith("ratio_dev") else v.mean() for k, v in losses.items()}
                    return minibatch_update(train_state, grads), losses

                train_state, losses = jax.lax.scan(gather_and_update, train_state, (minibatches, entropy_keys))
                if args.stale_epoch_memory:
                    memory_index = next_memory_index(memory_index, minibatches.reshape(-1))
                return (train_state, memory_index), losses

            key, epoch_key = jax.random.split(runner.key)
            ((params, opt_states), _), losses = jax.lax.scan(
                epoch, (TrainState(runner.params, runner.opt_states), jnp.arange(N)),
                jax.random.split(epoch_key, args.ppo_epochs))
            runner = runner._replace(params=params, opt_states=opt_states, key=key)

            ended = traj_batch.done.sum()
            first = ("loss/ratio_dev", "loss/actor_ratio_dev")
            train_metrics = {k: v.mean() for k, v in losses.items() if k not in first}
            for k in first:  # first epoch, first minibatch
                if k in losses:
                    train_metrics[k.replace("loss/", "loss/first_")] = losses[k][0, 0]
            train_metrics["episode_return"] = traj_batch.episode_return.sum() / jnp.maximum(ended, 1)
            train_metrics["episodes"] = ended
            return runner, train_metrics

        def checkpoint(runner: RunnerState, index):
            runner, train_metrics = jax.lax.scan(update, runner, None, args.updates_per_eval)
            # ------------------------------------------------------------------ EVALUATE
            key, eval_key, guider_key = jax.random.split(runner.key, 3)
            returns, metrics = evaluate(deployed(runner.params), eval_key, args.num_eval_episodes, args.ctce)
            best_actor, best_return = keep_best(runner.best_actor, runner.best_return, deployed(runner.params),
                                                returns.mean())
            runner = runner._replace(key=key, best_actor=best_actor, best_return=best_return)
            summary = runs.checkpoint_summary(train_metrics, runner.params)
            if not args.ctce:  # diagnostic: how well the guider itself plays, centralised
                guider_returns, _ = evaluate(runner.params.guider, guider_key, args.num_eval_episodes, True)
                summary["guider/episode_return"] = guider_returns.mean()
            out = {"eval/episode_return": returns, "eval/episode_metric": metrics, **summary}
            if report is not None:
                jax.debug.callback(report, seed_index, index, out, runner if args.save_state else None)
            return runner, out

        runner, history = runs.scan_checkpoints(checkpoint, runner, first_checkpoint, args.num_evals)
        # The paper's absolute metric: the best checkpoint, re-evaluated on 10x the episodes.
        key, abs_key = jax.random.split(runner.key)
        abs_returns, abs_metrics = evaluate(runner.best_actor, abs_key, 10 * args.num_eval_episodes, args.ctce)
        return {"history": history, "absolute/episode_return": abs_returns,
                "absolute/episode_metric": abs_metrics, "actor": deployed(runner.params),
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
    """Reload the policies saved by a run (--save-model) and evaluate each on num_eval_episodes:
    the learner on local observations, or the guider's joint policy for a --ctce run."""

    def load_policy(saved: Args, env: envs.MultiAgentEnv):  # -> (evaluate, the saved parameters' template)
        evaluate = jax.jit(make_evaluate(saved, env, *make_networks(saved, env)), static_argnums=(2, 3))
        template = jax.eval_shape(make_train(saved, env).init, jax.random.PRNGKey(0)).best_actor  # shapes only
        return (lambda params, key, num_episodes: evaluate(params, key, num_episodes, saved.ctce)), template

    runs.evaluate_saved(args, Args, ALGO, load_policy)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.eval_from:
        return evaluate_saved(args)
    check_args(args)
    env = envs.make(args.env_id)
    system = system_name(args)  # the method's name in the results
    run_dir, wandb_runs = runs.start_run(args, env, ALGO, system)  # runs/<run>/config.json, wandb, header
    # the progress line also shows the guider's own (centralised) return
    reporter = runs.Reporter(args, env, run_dir, wandb_runs, system=system, columns={"guider/episode_return": "guider"})
    # All seeds in one compiled call: seed i trains from fold_in(PRNGKey(seed), i).
    train = make_train(args, env, reporter)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(args.seed), i))(jnp.arange(args.num_seeds))
    results = runs.compile_and_run(train, keys, reporter)
    # The absolute metric; under --save-model each seed's deployed policy:
    # the learner (the actor), or under --ctce the guider.
    runs.finish_run(args, run_dir, results, reporter, wandb_runs, ALGO, saved="policies")


if __name__ == "__main__":
    runs.cli(main)
