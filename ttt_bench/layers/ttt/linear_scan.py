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

from ttt_bench.layers.ttt.reconstruction import LN_EPS, layer_norm_l2_grad


def _inner_grad(z, prepared, weight_sq):
    return z - prepared if weight_sq is None else layer_norm_l2_grad(z, weight_sq, prepared)


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
        for m in range(n_chunks):
            grads[m] = _inner_grad(torch.bmm(keys[m], states[m]), prepared[m], weight_sq)
            torch.baddbmm(states[m], rated_t[m], grads[m], alpha=-1.0, out=states[m + 1])
        starts, final = states[:n_chunks], states[n_chunks].clone()
        ctx.save_for_backward(keys, rated, prepared, weight_sq, starts, grads)
        return starts, grads, final

    @staticmethod
    def backward(ctx, d_starts, d_grads, d_final):
        keys, rated, prepared, weight_sq, starts, grads = ctx.saved_tensors
        # carry = dL/dW_{m+1}, accumulated in place from the last mini-batch back to the first.
        carry = torch.zeros_like(starts[0]) if d_final is None else d_final.clone()
        width = grads.shape[-1]
        new = lambda like: torch.empty(like.shape, dtype=like.dtype, device=like.device)
        d_z, d_rated = new(grads), new(rated)  # d_rated holds -dL/dR_m until the end
        if weight_sq is not None:
            z = keys @ starts  # [M, BH, b, d], recomputed rather than kept from forward
            shape = z.shape[-1:]
            normed, mean, inv_std = torch.native_layer_norm(z, shape, None, None, LN_EPS)
            lnb = lambda x, m: torch.ops.aten.native_layer_norm_backward(
                x, z[m], shape, mean[m], inv_std[m], None, None, [True, False, False]
            )[0]
            a = torch.addcmul(prepared, normed, weight_sq)  # weight_sq [BH, 1, d] against [M, BH, b, d]
            r_mean_an = inv_std * (a * normed).mean(-1, keepdim=True)
            a_scaled = a * (inv_std / width)
            normed_scaled = normed * (inv_std / width)
            d_prepared = new(prepared)

        keys_t = keys.transpose(-1, -2)
        for m in range(keys.shape[0] - 1, -1, -1):
            torch.bmm(grads[m], carry.transpose(-1, -2), out=d_rated[m])
            d_g = -(rated[m] @ carry) if d_grads is None else torch.baddbmm(d_grads[m], rated[m], carry, alpha=-1.0)
            if weight_sq is None:
                d_z[m] = d_g
            else:
                d_a_m = lnb(d_g, m)
                d_normed = torch.addcmul(d_a_m * weight_sq, r_mean_an[m], d_g, value=-1.0)
                d_normed = torch.addcmul(d_normed, a_scaled[m], (d_g * normed[m]).sum(-1, keepdim=True), value=-1.0)
                dot_grads = (d_g * grads[m]).sum(-1, keepdim=True)
                torch.addcmul(lnb(d_normed, m), normed_scaled[m], dot_grads, value=-1.0, out=d_z[m])
                d_prepared[m] = d_a_m
            if d_starts is not None:
                carry += d_starts[m]
            carry.baddbmm_(keys_t[m], d_z[m])

        d_keys = d_z @ starts.transpose(-1, -2)
        if weight_sq is None:
            d_prepared, d_weight_sq = -d_z, None
        else:
            d_weight_sq = (d_prepared * normed).sum((0, 2))[:, None]
        return carry, d_keys, d_rated.neg_(), d_prepared, d_weight_sq
