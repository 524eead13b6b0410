"""The dual form's sequential scan for the two-layer learner (TTT-MLP) with the views loss, differentiated by hand.

Per mini-batch m (rows are tokens; W'_l = [W_l; c_l] acts on augmented inputs; h = 4d; g = GELU, exact or tanh):
    Z1 = X1 W1,   X2 = [g(Z1), 1],   Z2 = X2 W2,   G2 = dl/dZ2 (closed form, reconstruction.py),
    H = G2 W2r^T (W2r: W2 without its bias row),   G1 = H * g'(Z1),
    W1 <- W1 - R1^T G1,   W2 <- W2 - R2^T G2,      R_l = diag(a) X_l (a: the last rates; R1 comes precomputed).
The scan returns every W_l, X2 and G_l and the final weights, which the batched readout reads.

Its vector-Jacobian product, for the carry C_l = dL/dW_l after the step and the readout's own dW_l, dX2, dG_l:
    dR1 = -G1 C1^T,   dG1 += -R1 C1,   dR2 = -G2 C2^T,   dG2 += -R2 C2 + dH W2r,   dH = dG1 * g'(Z1)
    dZ2 = VJP of the loss gradient at dG2 (LayerNorm: below),   dX2 += dZ2 W2^T + diag(a) dR2
    dZ1 = dX2[:, :h] * g'(Z1) + dG1 * H * g''(Z1)               (G1 moves with Z1 through g')
    C1 <- C1 + dW1 + X1^T dZ1,   C2 <- C2 + dW2 + X2^T dZ2 + [dH^T G2; 0],   then dX1 = dZ1 W1^T, da = rowsum(dR2 X2).
Only the chain from C to C runs in the loop; g'(Z1), H g''(Z1), R2 are made for all mini-batches before it and
dX1, da, dP, ds after it, as linear_scan.py does. Z1, H and Z2 are kept from the forward (4 + 4 + 1 floats per
token and head dim) rather than recomputed with matmuls.

With LayerNorm, dZ2 from dG2 is reconstruction.LayerNormL2Backward's, as in linear_scan.py.

checkpoint_group = c > 0 (MLPCheckpointedScan): the forward scans c mini-batches at a time, reads each group out at
once and keeps only the group's start weights; the backward, group by group in reverse, scans the group again, runs
its readout again under autograd (a few batched ops: a graph costs little there, and the readout's math stays in one
place, inner_loop._dual_readout) and then the scan backward above. Per token the stored start weights shrink by c.
checkpoint_group = 0 runs the same Function in groups of KEPT_GROUP with `keep`: each group's scan and readout graph
are kept, and the backward takes them rather than recomputing. Groups rather than one scan of all M mini-batches
because every buffer then stays under the allocator's 32 MB mmap threshold: at N = 4096 the starts alone are 85 MB,
which came back as fresh pages (a fault per 4 KB written) on every call; a group's buffers are reused memory, and
without a graph to keep (inference) one set serves every group.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
from torch.autograd.function import once_differentiable

from ttt_bench.layers.ttt.gelu import gelu, gelu_grad2
from ttt_bench.layers.ttt.reconstruction import LayerNormL2Backward, scan_layer_norm_l2_grad
from ttt_bench.layers.ttt.scan_steps import step_views

# checkpoint_group = 0 scans and reads out in groups of this many mini-batches (MLPCheckpointedScan's keep).
KEPT_GROUP = 32
# grad * g'(z) (gelu.py's gelu_grad times grad) as one kernel, writing into the scan's buffers.
_gelu_backward, _gelu_backward_into = torch.ops.aten.gelu_backward, torch.ops.aten.gelu_backward.grad_input


@dataclass(frozen=True)
class _Inputs:
    """What the scan reads per mini-batch, [M, BH, b, .]: keys X1 (augmented), rated keys R1, the prepared target P,
    the last rates a [M, BH, b]; weight_sq s [BH, 1, d] or None (no LayerNorm); the GELU's form."""

    keys: torch.Tensor
    rated: torch.Tensor
    prepared: torch.Tensor
    last: torch.Tensor
    weight_sq: torch.Tensor | None
    approximate: str

    def part(self, start: int, stop: int) -> _Inputs:
        cut = lambda x: x[start:stop]
        return _Inputs(cut(self.keys), cut(self.rated), cut(self.prepared), cut(self.last), self.weight_sq,
                       self.approximate)


@dataclass(frozen=True)
class _Run:
    """A scan over L mini-batches: per mini-batch the start weights W_l [L, BH, e_l, .], Z1, H, G1 [L, BH, b, h],
    X2 [L, BH, b, h (+ 1)], Z2, G2 [L, BH, b, d]; and the weights after the last (None once rebuilt for backward)."""

    starts1: torch.Tensor
    starts2: torch.Tensor
    z1: torch.Tensor
    h: torch.Tensor
    g1: torch.Tensor
    x2: torch.Tensor
    z2: torch.Tensor
    g2: torch.Tensor
    final1: torch.Tensor | None = None
    final2: torch.Tensor | None = None

    def saved(self) -> tuple[torch.Tensor, ...]:
        """What the backward reads, in field order: all but the final weights."""
        return self.starts1, self.starts2, self.z1, self.h, self.g1, self.x2, self.z2, self.g2


def _buffers(n: int, b: int, w1: torch.Tensor, w2: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What a scan of up to n mini-batches writes: both layers' weights [n + 1, BH, e_l, .] (the starts, then the
    final), Z1, H, G1, X2 (its bias column set), Z2, G2."""
    bh, hidden, (e2, d) = w1.shape[0], w1.shape[-1], w2.shape[-2:]
    new = lambda *shape: torch.empty(shape, dtype=w1.dtype, device=w1.device)
    x2 = new(n, bh, b, e2)
    x2[..., hidden:] = 1.0  # the bias row's input; no-op without inner biases
    return (new(n + 1, *w1.shape), new(n + 1, *w2.shape), *(new(n, bh, b, hidden) for _ in range(3)), x2,
            new(n, bh, b, d), new(n, bh, b, d))


def _forward(inp: _Inputs, w1: torch.Tensor, w2: torch.Tensor, update_last: bool = True, buffers=None) -> _Run:
    """Scan inp's mini-batches from (W1, W2) [BH, e_l, .]. Without update_last the last step stops at its gradients
    (a recomputation whose next weights are known). buffers: _buffers for at least as many mini-batches, written
    over (the checkpointed scan's groups share one set: freshly allocated ones cost a page fault per 4 KB written)."""
    n, bh, b, _ = inp.keys.shape
    hidden = w1.shape[-1]
    states1, states2, z1, h, g1, x2, z2, g2 = (x[: n + 1] if i < 2 else x[:n] for i, x in enumerate(
        buffers or _buffers(n, b, w1, w2)))
    rated_g2 = torch.empty(g2.shape[1:], dtype=g2.dtype, device=g2.device)
    states1[0].copy_(w1)
    states2[0].copy_(w2)
    approximate, weight_sq = inp.approximate, inp.weight_sq
    steps = step_views(inp.keys, inp.rated.transpose(-1, -2), inp.prepared, inp.last[..., None], states1, states1[1:],
                   states2, states2[:, :, :hidden].transpose(-1, -2), states2[1:], z1, x2[..., :hidden], x2,
                   x2.transpose(-1, -2), z2, g2, h, g1)
    bmm, baddbmm = torch.bmm, torch.baddbmm
    for m, (k_m, rated_t_m, p_m, a_m, w1_m, w1_next, w2_m, w2r_t_m, w2_next, z1_m, act_m, x2_m, x2_t_m, z2_m, g2_m,
            h_m, g1_m) in enumerate(steps):
        bmm(k_m, w1_m, out=z1_m)
        # Not gelu's out= variant: on the CPU in float32 (torch 2.13) the exact GELU writes a strided `out` wrongly.
        act_m.copy_(gelu(z1_m, approximate))
        bmm(x2_m, w2_m, out=z2_m)
        if weight_sq is None:
            torch.sub(z2_m, p_m, out=g2_m)
        else:
            g2_m.copy_(scan_layer_norm_l2_grad(z2_m, weight_sq, p_m))
        bmm(g2_m, w2r_t_m, out=h_m)
        _gelu_backward_into(h_m, z1_m, approximate=approximate, grad_input=g1_m)
        if m == n - 1 and not update_last:
            break
        baddbmm(w1_m, rated_t_m, g1_m, alpha=-1.0, out=w1_next)
        baddbmm(w2_m, x2_t_m, torch.mul(g2_m, a_m, out=rated_g2), alpha=-1.0, out=w2_next)
    return _Run(states1[:-1], states2[:-1], z1, h, g1, x2, z2, g2, states1[-1], states2[-1])


@dataclass
class _Grads:
    """The scan's input gradients over a range of mini-batches: X1, R1, P, a and (LayerNorm) s."""

    keys: torch.Tensor
    rated: torch.Tensor
    prepared: torch.Tensor
    last: torch.Tensor
    weight_sq: torch.Tensor | None


def _backward(inp: _Inputs, run: _Run, carry1, carry2, d_starts1, d_starts2, d_x2, d_g1, d_g2) -> _Grads:
    """The VJP of `_forward` over inp's mini-batches (module docstring). carry_l: dL/dW_l after the last mini-batch,
    turned in place into dL/dW_l before the first; d_*: the gradients of run's starts, X2 and G_l [L, ...] or None."""
    n, bh, b, _ = inp.keys.shape
    hidden = run.h.shape[-1]
    starts1, starts2 = run.starts1, run.starts2
    new = lambda like: torch.empty(like.shape, dtype=like.dtype, device=like.device)
    zeros = lambda like: [torch.zeros(like.shape[1:], dtype=like.dtype, device=like.device)] * n
    per_step = lambda x, like: x.unbind(0) if x is not None else zeros(like)
    # g'(Z1) as gelu.gelu_grad, in one kernel rather than ten passes over [L, BH, b, h].
    slope = _gelu_backward(torch.ones((), dtype=run.z1.dtype, device=run.z1.device).expand(run.z1.shape), run.z1,
                           approximate=inp.approximate)
    curve = run.h * gelu_grad2(run.z1, inp.approximate)  # H g''(Z1)
    rated2 = run.x2 * inp.last[..., None]
    d_rated, p2, d_z1, d_g2_all = new(inp.rated), new(run.x2), new(run.z1), new(run.g2)  # p2 = -dR2, d_rated -dR1
    d_g1_m, d_x2_m = new(run.g1[0]), new(run.x2[0])
    # dH with a zero column for the bias row (X2's width), so that dH W2r and [dH^T G2; 0] take all of W2 and C2:
    # on their row slices the products fell back to one matmul per batch entry.
    d_h_wide = torch.zeros(run.x2.shape[1:], dtype=run.x2.dtype, device=run.x2.device)
    d_h = d_h_wide[..., :hidden]
    weight_sq = inp.weight_sq
    steps = [x.unbind(0) for x in (
        inp.keys.transpose(-1, -2), inp.rated, inp.last[..., None], starts2.transpose(-1, -2),
        starts2, run.x2.transpose(-1, -2), rated2, run.g1, run.g2, slope, curve, d_rated, p2, d_z1,
        d_g2_all)]
    steps += [per_step(d, like) for d, like in (
        (d_starts1, starts1), (d_starts2, starts2), (d_x2, run.x2), (d_g1, run.g1), (d_g2, run.g2))]
    if weight_sq is not None:
        ln = LayerNormL2Backward(run.z2, inp.prepared, weight_sq, run.g2)
        steps += ln.per_step
    bmm, baddbmm, addcmul = torch.bmm, torch.baddbmm, torch.addcmul
    for (keys_t_m, rated_m, a_m, w2_t_m, w2_m, x2_t_m, rated2_m, g1_m, g2_m, slope_m, curve_m, d_rated_m, p2_m,
         d_z1_m, d_g2_m, d_s1_m, d_s2_m, d_x2_in, d_g1_in, d_g2_in, *normalised) in zip(*(reversed(x) for x in steps)):
        bmm(g1_m, carry1.transpose(-1, -2), out=d_rated_m)
        baddbmm(d_g1_in, rated_m, carry1, alpha=-1.0, out=d_g1_m)
        bmm(g2_m, carry2.transpose(-1, -2), out=p2_m)
        torch.mul(d_g1_m, slope_m, out=d_h)
        baddbmm(d_g2_in, rated2_m, carry2, alpha=-1.0, out=d_g2_m).baddbmm_(d_h_wide, w2_m)
        d_z2 = d_g2_m if weight_sq is None else ln.step(d_g2_m, g2_m, *normalised)
        addcmul(d_x2_in, a_m, p2_m, value=-1.0, out=d_x2_m).baddbmm_(d_z2, w2_t_m)
        torch.mul(d_x2_m[..., :hidden], slope_m, out=d_z1_m).addcmul_(d_g1_m, curve_m)
        carry1.add_(d_s1_m).baddbmm_(keys_t_m, d_z1_m)
        carry2.add_(d_s2_m).baddbmm_(x2_t_m, d_z2).baddbmm_(d_h_wide.transpose(-1, -2), g2_m)

    d_keys = d_z1 @ starts1.transpose(-1, -2)
    d_last = (p2 * run.x2).sum(-1).neg_()
    if weight_sq is None:
        return _Grads(d_keys, d_rated.neg_(), d_g2_all.neg_(), d_last, None)
    d_prepared, d_weight_sq = ln.input_grads(d_g2_all)
    return _Grads(d_keys, d_rated.neg_(), d_prepared, d_last, d_weight_sq)


def _carries(d_final1, d_final2, w1, w2):
    """dL/dW_l after the last mini-batch, to be accumulated in place."""
    carry = lambda d, w: torch.zeros(w.shape, dtype=w.dtype, device=w.device) if d is None else d.clone()
    return carry(d_final1, w1), carry(d_final2, w2)


class MLPCheckpointedScan(torch.autograd.Function):
    """The scan (_forward, _backward) with its readout inside, group by group (module docstring): (W1 [BH, e1, h],
    W2 [BH, e2, d], keys X1 [M, BH, b, e1], rated R1 [M, BH, b, e1], prepared [M, BH, b, d], last rates [M, BH, b],
    weight_sq [BH, 1, d] or None, queries [M, BH, b, d], rates [M, BH, b, b], approximate, group, readout, keep) -> (the
    readout's pre-head output [BH, M*b, d], final W1, W2). readout(queries, starts, inputs, grads, rates) is
    inner_loop's batched readout with the per-layer lists of one group's tensors, and no head. keep: every group's
    scan and readout graph kept for the backward rather than recomputed (checkpoint_group = 0, module docstring)."""

    @staticmethod
    def forward(ctx, w1, w2, keys, rated, prepared, last, weight_sq, queries, rates, approximate, group, readout,
                keep=False):
        inp = _Inputs(keys, rated, prepared, last, weight_sq, approximate)
        n, bh, b, _ = keys.shape
        bounds = list(pairwise([*range(0, n, group), n]))
        firsts1 = torch.empty((len(bounds) + 1, *w1.shape), dtype=w1.dtype, device=w1.device)
        firsts2 = torch.empty((len(bounds) + 1, *w2.shape), dtype=w2.dtype, device=w2.device)
        firsts1[0].copy_(w1)
        firsts2[0].copy_(w2)
        output = torch.empty((bh, n * b, w2.shape[-1]), dtype=w2.dtype, device=w2.device)
        keep = keep and any(ctx.needs_input_grad)
        buffers = None if keep else _buffers(min(group, n), b, w1, w2)
        ctx.kept = []
        for i, (start, stop) in enumerate(bounds):
            part = inp.part(start, stop)
            run = _forward(part, firsts1[i], firsts2[i], buffers=buffers)
            if keep:
                leaves = _readout_leaves(part, run, queries[start:stop], rates[start:stop])
                with torch.enable_grad():
                    z = _read(readout, leaves)
                ctx.kept.append((run, leaves, z))
                z = z.detach()
            else:
                z = _read(readout, (queries[start:stop], run.starts1, run.starts2, part.keys, run.x2, run.g1, run.g2,
                                    rates[start:stop]))
            output[:, start * b : stop * b] = z
            firsts1[i + 1].copy_(run.final1)
            firsts2[i + 1].copy_(run.final2)
        ctx.approximate, ctx.group, ctx.readout = approximate, group, readout
        ctx.save_for_backward(keys, rated, prepared, last, weight_sq, queries, rates, firsts1[:-1], firsts2[:-1])
        return output, firsts1[-1].clone(), firsts2[-1].clone()

    @staticmethod
    @once_differentiable  # written with in-place accumulation: a second derivative through it is refused, not wrong
    def backward(ctx, d_output, d_final1, d_final2):
        keys, rated, prepared, last, weight_sq, queries, rates, firsts1, firsts2 = ctx.saved_tensors
        inp = _Inputs(keys, rated, prepared, last, weight_sq, ctx.approximate)
        n, _, b, _ = keys.shape
        carry1, carry2 = _carries(d_final1, d_final2, firsts1[0], firsts2[0])
        if d_output is None:
            d_output = torch.zeros((keys.shape[1], n * b, firsts2.shape[-1]), dtype=keys.dtype, device=keys.device)
        new = lambda like: torch.empty(like.shape, dtype=like.dtype, device=like.device)
        d_keys, d_rated, d_prepared, d_last, d_queries, d_rates = (
            new(x) for x in (keys, rated, prepared, last, queries, rates))
        d_weight_sq = None if weight_sq is None else torch.zeros_like(weight_sq)
        bounds = list(pairwise([*range(0, n, ctx.group), n]))
        buffers = None if ctx.kept else _buffers(min(ctx.group, n), b, firsts1[0], firsts2[0])
        for i, (start, stop) in reversed(list(enumerate(bounds))):
            part = inp.part(start, stop)
            if ctx.kept:
                run, leaves, z = ctx.kept.pop()  # popped: each group's buffers and graph go once it is done
            else:
                run = _forward(part, firsts1[i], firsts2[i], update_last=False, buffers=buffers)
                leaves = _readout_leaves(part, run, queries[start:stop], rates[start:stop])
                # The readout again as the forward ran it: with a graph, outside autocast whatever encloses backward.
                with torch.enable_grad(), torch.autocast(keys.device.type, enabled=False):
                    z = _read(ctx.readout, leaves)
            d_q, d_s1, d_s2, d_k, d_x2, d_g1, d_g2, d_r = torch.autograd.grad(
                z, leaves, d_output[:, start * b : stop * b])
            grads = _backward(part, run, carry1, carry2, d_s1, d_s2, d_x2, d_g1, d_g2)
            torch.add(grads.keys, d_k, out=d_keys[start:stop])
            d_rated[start:stop], d_prepared[start:stop], d_last[start:stop] = grads.rated, grads.prepared, grads.last
            d_queries[start:stop], d_rates[start:stop] = d_q, d_r
            if d_weight_sq is not None:
                d_weight_sq += grads.weight_sq
        return (carry1, carry2, d_keys, d_rated, d_prepared, d_last, d_weight_sq, d_queries, d_rates,
                None, None, None, None)


def _readout_leaves(part: _Inputs, run: _Run, queries, rates) -> list[torch.Tensor]:
    """A group's readout operands as leaves of a graph of their own (its gradients feed the scan's backward)."""
    return [x.detach().requires_grad_() for x in (
        queries, run.starts1, run.starts2, part.keys, run.x2, run.g1, run.g2, rates)]


def _read(readout, operands) -> torch.Tensor:
    """readout on (queries, W1, W2, X1, X2, G1, G2, rates) of one group."""
    q, s1, s2, x1, x2, g1, g2, r = operands
    return readout(q, [s1, s2], [x1, x2], [g1, g2], r)
