"""Titans' inner optimiser (momentum and a forgetting gate) for causal mini-batch TTT, with the inner gradient in
closed form (see reference.momentum_reference for the spec).

Shapes as in inner_loop.py: q, k: [BH, N, d]; target: [BH, N, e]; eta (theta): [BH, N]; momentum (mu) and retain
(r = 1 - alpha): [BH, N] or None; params: the learner's dense layers at W0. For token t of a mini-batch whose start
weights are the anchor W^s,
    g_t = grad_W theta_t l_t(W^s)          (l_t: the head's per-token loss of f_res(k_t; W) against target_t)
    S_t = mu_t S_{t-1} - g_t               (S_0 = 0; carried across mini-batches)
    W_t = r_t W_{t-1} + S_t                (on the augmented W' = [W; c]: the bias row decays too)
    output_t = head.readout(f_res(q_t; W_t), q_t),
and the next mini-batch's anchor is W at its start. momentum=None: S_t = -g_t, nothing carried; retain=None: r = 1;
both None: inner_loop's TTT with token_index_scale=False.

The chunked form unrolls a piece of n tokens (one mini-batch, or its rest) from (W, S): with
L_r[t, s] = prod_{s<u<=t} r_u for t >= s (else 0), L_mu likewise, D_t = prod_{u<=t} r_u, P_t = prod_{u<=t} mu_u,
M = L_r L_mu and c = L_r P (= mu_1 M[:, 1], as D = r_1 L_r[:, 1] and P = mu_1 L_mu[:, 1]; 1-based t),
    W_t = D_t W + c_t S - sum_{j<=t} M_tj theta_j X_j^T G_j,     S_t = P_t S - sum_{j<=t} L_mu[t, j] theta_j X_j^T G_j,
with X_l, G_l each layer's inputs and per-token loss gradients at the anchor; so a query reads, layer by layer,
    z~_l = D * (x~ W_l) + c * (x~ S_l) - ((M * theta_j) * (x~ X_l^T)) G_l.
Without forgetting M is a cumsum of L_mu (no product); without momentum M = L_r and S is absent; a fresh run has no
S (nor its products) until its first piece makes one.

This is the neural memory's update in Titans (momentary surprise g_t, past surprise S_t with momentum mu_t,
forgetting gate alpha_t) in the form of its parallel training, where every gradient of a mini-batch is taken at the
mini-batch's start weights; with b = 1 it is Titans' per-token recurrence, the gradient at W_{t-1}. Where this
differs from Titans: the inner loss is TTT's views loss with its LayerNorm and residual head
(reconstruction.ViewsReconstruction), not Titans' plain MSE ||M(k_t) - v_t||^2 on a deep memory with its own
residual and normalisation choices; the forgetting gate also decays the augmented bias row; and theta, mu and alpha
are whatever the layer passes in, per head and per token ([BH, N]; Titans makes them data-dependent functions of
the token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ttt_bench.layers.base import with_ones
from ttt_bench.layers.ttt import learners
from ttt_bench.layers.ttt.inner_loop import inner_grads


@dataclass
class MomentumState:
    """The loop between two tokens (a decoder's state): the mini-batch in progress started from `anchor` (augmented
    W'_l per layer, [BH, e_l, d_l], where its gradients are taken) and has read `position` tokens, 0 <= position < b;
    `weights` are W_t, `velocity` S_t per layer (None without momentum, or where S is still zero)."""

    anchor: list[torch.Tensor]
    weights: list[torch.Tensor]
    velocity: list[torch.Tensor] | None
    position: int
    learner: learners.Learner

    @classmethod
    def start(cls, weights: list[torch.Tensor], learner: learners.Learner, momentum: bool) -> MomentumState:
        """A sequence about to start from `weights`; with momentum its S is zero, kept at a decoder's fixed shape."""
        velocity = [torch.zeros_like(w) for w in weights] if momentum else None
        return cls(weights, weights, velocity, 0, learner)


def _begin(params, momentum, gelu_approximate: str) -> MomentumState:
    """The state to run from: `params` itself, or a fresh start whose zero S is left out (None)."""
    if not isinstance(params, MomentumState):
        return MomentumState.start(*learners.augment(params, gelu_approximate), momentum=False)
    if momentum is None and params.velocity is not None:
        raise ValueError("momentum=None, but the MomentumState carries a velocity: pass the momentum it was run with")
    return params


def _end(params, state: MomentumState):
    """A fresh run returns the final dense layers (W, c), a continued one the state after its last token."""
    return state if isinstance(params, MomentumState) else learners.unaugment(state.weights, state.learner)


def causal_chunked(q, k, target, eta, momentum, retain, params, head, mini_batch: int, gelu_approximate: str = "none"):
    """One sequential step per mini-batch (a trailing shorter piece too), each unrolled in closed form (module doc).

    `params` may instead be a MomentumState (possibly mid-mini-batch: the first piece is then the rest of that
    mini-batch, its gradients at its anchor); the second result is then the MomentumState after the last token.
    Returns (output [BH, N, d], the final dense layers or state)."""
    state = _begin(params, momentum, gelu_approximate)
    anchor, weights, velocity, position, learner = (
        state.anchor, state.weights, state.velocity, state.position, state.learner)
    n = int(q.shape[1])  # a traced shape (fvcore) is a tensor: the pieces' sizes are fixed for the trace
    first = min(mini_batch - position, n)
    full, rest = divmod(n - first, mini_batch)
    sizes = [s for s in [first] + [mini_batch] * full + [rest] if s]
    keys, prepared = learners.first_input(learner, k), head.prepare(target)
    split = lambda x: [None] * len(sizes) if x is None else x.split(sizes, dim=1)
    outputs = []
    for q_p, k_p, t_p, theta, mu, r in zip(*(split(x) for x in (q, keys, prepared, eta, momentum, retain))):
        z, weights, velocity = _piece(q_p, k_p, t_p, theta, mu, r, anchor, weights, velocity, learner, head)
        outputs.append(head.readout(z, q_p))
        position += q_p.shape[1]
        if position == mini_batch:
            anchor, position = weights, 0
    output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
    return output, _end(params, MomentumState(anchor, weights, velocity, position, learner))


def _decays(factors: torch.Tensor) -> torch.Tensor:
    """L[t, s] = prod_{s<u<=t} f_u for t >= s, else 0: [BH, n] -> [BH, n, n]. A cumprod over t of f_t below the
    diagonal and 1 elsewhere, so an exact zero factor is fine (no logs)."""
    n = factors.shape[-1]
    below = torch.ones(n, n, dtype=torch.bool, device=factors.device).tril(-1)
    return torch.where(below, factors[..., :, None], 1.0).cumprod(-2).tril()


def _times(factor: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """factor * x, broadcast over x's trailing dims; None is 1 (nothing runs)."""
    if factor is None:
        return x
    return factor.reshape(*factor.shape, *[1] * (x.dim() - factor.dim())) * x


def _piece(q, keys, prepared, theta, mu, r, anchor, weights, velocity, learner, head):
    """n tokens of one mini-batch from (W = weights, S = velocity), gradients at `anchor`
    -> (z~ of the last layer [BH, n, d_out], W_n, S_n)."""
    inputs, grads = inner_grads(anchor, learner, head, keys, prepared)
    n = theta.shape[-1]
    l_mu = None if mu is None else _decays(mu)
    l_r = None if r is None else _decays(r)
    if l_mu is None:
        mix = l_r if l_r is not None else torch.ones(n, n, dtype=theta.dtype, device=theta.device).tril()
    elif l_r is None:
        mix = l_mu.cumsum(-2)  # L_r is the all-ones lower triangle
    else:
        mix = l_r @ l_mu
    decay = None if r is None else r[..., :1] * l_r[..., 0]  # D_t
    carry = None if velocity is None else mu[..., :1] * mix[..., 0]  # c_t, read only where S is
    rated = mix * theta[..., None, :]
    x_bar, z_bar = learners.first_input(learner, q), None
    for layer, (w, x, g, has_bias) in enumerate(zip(weights, inputs, grads, learner.biased)):
        if layer:
            x_bar = learners.activate(z_bar, learner)
            x_bar = with_ones(x_bar) if has_bias else x_bar
        z_bar = _times(decay, x_bar @ w) - (rated * (x_bar @ x.transpose(-1, -2))) @ g
        if velocity is not None:
            z_bar = z_bar + _times(carry, x_bar @ velocity[layer])
    kept_weights = None if decay is None else decay[..., -1]  # D_n
    weights = [_times(kept_weights, w) - x.transpose(-1, -2) @ _times(rated[..., -1, :], g)
               for w, x, g in zip(weights, inputs, grads)]
    if velocity is not None:
        weights = [w + _times(carry[..., -1], s) for w, s in zip(weights, velocity)]
    if mu is None:
        return z_bar, weights, None
    momentum_rated = l_mu[..., -1, :] * theta
    pushes = [x.transpose(-1, -2) @ _times(momentum_rated, g) for x, g in zip(inputs, grads)]
    if velocity is None:
        return z_bar, weights, [-p for p in pushes]
    kept = mu[..., 0] * l_mu[..., -1, 0]  # P_n
    return z_bar, weights, [_times(kept, s) - p for s, p in zip(velocity, pushes)]


def causal_primal(q, k, target, eta, momentum, retain, params, head, mini_batch: int, gelu_approximate: str = "none"):
    """Token by token, as a decoder runs it: each token's gradient at the anchor in closed form, S_t and W_t
    materialised and W_t read at q_t. Arguments and results as causal_chunked."""
    state = _begin(params, momentum, gelu_approximate)
    anchor, weights, velocity, position, learner = (
        state.anchor, state.weights, state.velocity, state.position, state.learner)
    keys, queries, prepared = learners.first_input(learner, k), learners.first_input(learner, q), head.prepare(target)
    per_token = lambda x: [None] * q.shape[1] if x is None else x.unbind(1)
    outputs = []
    tokens = zip(*(per_token(x) for x in (q, queries, keys, prepared, eta, momentum, retain)))
    for q_t, query_t, k_t, p_t, theta_t, mu_t, r_t in tokens:
        inputs, grads = inner_grads(anchor, learner, head, k_t[:, None], p_t[:, None])
        steps = [_times(theta_t, x).transpose(-1, -2) @ g for x, g in zip(inputs, grads)]  # g_t per layer
        if mu_t is None or velocity is None:
            step = [-g for g in steps]
        else:
            step = [_times(mu_t, s) - g for s, g in zip(velocity, steps)]
        velocity = None if mu_t is None else step
        weights = [_times(r_t, w) + s for w, s in zip(weights, step)]
        z = learners.forward_with_cache(weights, learner, query_t[:, None])[0]
        outputs.append(head.readout(z, q_t[:, None]))
        position += 1
        if position == mini_batch:
            anchor, position = weights, 0
    return torch.cat(outputs, dim=1), _end(params, MomentumState(anchor, weights, velocity, position, learner))


@dataclass(frozen=True)
class MomentumCost:
    """Matmul work of causal_chunked per (sequence, head), in MACs (FLOPs = 2 x MACs)."""

    forward_macs: int  # as executed, the last piece's state update included
    final_state_macs: int  # the part of forward_macs that only makes the final state (the last piece's W_n, S_n)
    backward_macs: int  # what autograd runs for a loss on the output, every input requiring a gradient


def chunked_macs(seq_len: int, mini_batch: int, widths: list[tuple[int, int]], backprop_widths: list[tuple[int, int]],
                 momentum: bool, forgetting: bool) -> MomentumCost:
    """causal_chunked's products from a fresh start. widths: each layer's augmented (d_in (+1 with a bias), d_out);
    backprop_widths: the (d_in, d_out) of the layers a loss gradient is carried back through (G_l = G_{l+1} W^T).

    Per piece of n tokens: the gradients at the anchor (n tokens through the learner and back), the readout
    (x~ W, x~ S where S exists, and per layer the n x n scores x~ X^T and their product with G), M = L_r L_mu
    (n^3, only with both momentum and forgetting) and the state update (X^T G for W, and again for S with momentum).
    Backward: two products per forward product (every operand needs a gradient), none for the last piece's update."""
    dense = sum(a * e for a, e in widths)
    pairs = sum(a + e for a, e in widths)
    backprop = sum(a * e for a, e in backprop_widths)
    full, rest = divmod(seq_len, mini_batch)
    sizes = [mini_batch] * full + ([rest] if rest else [])
    forward = update = 0
    for i, n in enumerate(sizes):
        reads = 1 + int(momentum and i > 0)  # x~ W, and x~ S once S exists (not in the first piece)
        forward += n * (dense + backprop) + n * reads * dense + n * n * pairs
        forward += n**3 if momentum and forgetting else 0
        update = n * dense * (1 + int(momentum))
        forward += update
    return MomentumCost(forward, update, 2 * (forward - update))


def primal_macs(seq_len: int, widths: list[tuple[int, int]], backprop_widths: list[tuple[int, int]]) -> int:
    """causal_primal's forward per (sequence, head): per token, its gradient at the anchor (forward and back), the
    outer product X^T G that makes g_t, and the read of W_t at q_t. S and the decay are elementwise."""
    dense = sum(a * e for a, e in widths)
    return seq_len * (3 * dense + sum(a * e for a, e in backprop_widths))
