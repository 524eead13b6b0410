"""The dual form's sequential scan for a one-layer learner (TTT-Linear), differentiated by hand.

Per mini-batch m (rows are tokens; W' = [W; c] acts on augmented keys K_m = [k, 1]):
    Z_m = K_m W_m,   G_m = dl/dZ_m (closed form, see reconstruction.py),   W_{m+1} = W_m - R_m^T G_m
with R_m = diag(last rates) K_m. The scan returns every W_m, G_m and the final W. Under autograd this
is ~10 small ops per mini-batch whose graph bookkeeping costs more than their arithmetic; here the
forward runs without a graph and the backward is written out, with everything that does not depend
on the carried gradient batched over all mini-batches at once.

Tensors are mini-batch-major ([M, BH, ...]) so each step reads and writes contiguous blocks, and the
per-step results go straight into preallocated buffers (`out=`, in-place accumulation): at TTT-Linear's
sizes a step's matmuls take microseconds, and copies, stacks and strided reads would cost as much.

With LayerNorm (f = k + LN(f_res(k)) ~ v), G = LNB(A) with A = P + N s, N = LN(Z), s = w^2,
P = (b - t) w, and LNB(x) = r (x - mean(x) - N mean(x N)), r = 1 / std(Z). Its vector-Jacobian
product, for an incoming dG (e = width):
    dA = LNB(dG)                                          (LNB is a symmetric projection, scaled)
    dN = dA s - r mean(A N) dG - (r / e) sum(dG N) A      (N enters A and the projection)
    dZ = LNB(dN) - (r / e) sum(dG G) N                    (the last term: r's own dependence on Z)
"""

from __future__ import annotations

import torch

from ttt_bench.layers.ttt.reconstruction import LayerNormL2Backward, scan_layer_norm_l2_grad
from ttt_bench.layers.ttt.scan_steps import step_views


class LinearLearnerScan(torch.autograd.Function):
    """(W0 [BH, e, d], keys [M, BH, b, e], rated [M, BH, b, e], prepared [M, BH, b, d], weight_sq [BH, 1, d]
    or None) -> (starts [M, BH, e, d]: W_m, grads [M, BH, b, d]: G_m, final [BH, e, d]: W_M)."""

    @staticmethod
    def forward(ctx, w0, keys, rated, prepared, weight_sq):
        n_chunks = keys.shape[0]
        states = torch.empty((n_chunks + 1, *w0.shape), dtype=w0.dtype, device=w0.device)
        grads = torch.empty(prepared.shape, dtype=prepared.dtype, device=prepared.device)
        states[0].copy_(w0)
        rated_t = rated.transpose(-1, -2)
        steps = step_views(keys, rated_t, prepared, grads, states[:-1], states[1:])
        bmm, baddbmm = torch.bmm, torch.baddbmm
        if weight_sq is None:
            for k_m, rated_t_m, p_m, g_m, w_m, w_next in steps:
                torch.sub(bmm(k_m, w_m), p_m, out=g_m)
                baddbmm(w_m, rated_t_m, g_m, alpha=-1.0, out=w_next)
        else:
            for k_m, rated_t_m, p_m, g_m, w_m, w_next in steps:
                g_m.copy_(scan_layer_norm_l2_grad(bmm(k_m, w_m), weight_sq, p_m))
                baddbmm(w_m, rated_t_m, g_m, alpha=-1.0, out=w_next)
        starts, final = states[:n_chunks], states[n_chunks].clone()
        ctx.save_for_backward(keys, rated, prepared, weight_sq, starts, grads)
        return starts, grads, final

    @staticmethod
    def backward(ctx, d_starts, d_grads, d_final):
        keys, rated, prepared, weight_sq, starts, grads = ctx.saved_tensors
        n_chunks = keys.shape[0]
        # carry = dL/dW_{m+1}, accumulated in place from the last mini-batch back to the first.
        carry = torch.zeros_like(starts[0]) if d_final is None else d_final.clone()
        new = lambda like: torch.empty(like.shape, dtype=like.dtype, device=like.device)
        zeros = lambda like: [torch.zeros(like.shape[1:], dtype=like.dtype, device=like.device)] * n_chunks
        d_z, d_rated, d_g = new(grads), new(rated), new(grads)  # d_rated holds -dL/dR_m until the end
        per_step = [keys.transpose(-1, -2).unbind(0), rated.unbind(0), grads.unbind(0), d_rated.unbind(0),
                    d_g.unbind(0), d_z.unbind(0), zeros(starts) if d_starts is None else d_starts.unbind(0),
                    zeros(grads) if d_grads is None else d_grads.unbind(0)]
        if weight_sq is not None:
            ln = LayerNormL2Backward(keys @ starts, prepared, weight_sq, grads)  # Z recomputed, not kept from forward
            per_step += ln.per_step
        bmm, baddbmm = torch.bmm, torch.baddbmm
        for keys_t_m, rated_m, g_m, d_rated_m, d_g_m, d_z_m, d_start_m, d_grad_m, *normalised in zip(
            *(reversed(x) for x in per_step)
        ):
            bmm(g_m, carry.transpose(-1, -2), out=d_rated_m)
            baddbmm(d_grad_m, rated_m, carry, alpha=-1.0, out=d_g_m)
            if weight_sq is None:  # G = Z - P
                d_z_m.copy_(d_g_m)
            else:
                ln.step(d_g_m, g_m, *normalised, out=d_z_m)
            carry.add_(d_start_m).baddbmm_(keys_t_m, d_z_m)

        if weight_sq is None:
            d_prepared, d_weight_sq = d_g.neg_(), None
        else:
            d_prepared, d_weight_sq = ln.input_grads(d_g)
        d_keys = d_z @ starts.transpose(-1, -2)
        return carry, d_keys, d_rated.neg_(), d_prepared, d_weight_sq
