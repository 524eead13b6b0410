"""The dual form's sequential scan for a one-layer learner (TTT-Linear), differentiated by hand.

Per mini-batch m (rows are tokens; W' = [W; c] acts on augmented keys K_m = [k, 1]):
    Z_m = K_m W_m,   G_m = dl/dZ_m (closed form, see reconstruction.py),   W_{m+1} = W_m - R_m^T G_m
with R_m = diag(last rates) K_m. The scan returns every W_m, G_m and the final W. Under autograd this
is ~10 small ops per mini-batch whose graph bookkeeping costs more than their arithmetic; here the
forward runs without a graph and the backward is written out, with everything that does not depend
on the carried gradient batched over all mini-batches at once.

With LayerNorm (f = k + LN(f_res(k)) ~ v), G = LNB(A) with A = P + N s, N = LN(Z), s = w^2,
P = (b - t) w, and LNB(x) = r (x - mean(x) - N mean(x N)), r = 1 / std(Z). Its vector-Jacobian
product, for an incoming dG (e = width):
    dA = LNB(dG)                                          (LNB is a symmetric projection, scaled)
    dN = dA s - r mean(A N) dG - (r / e) sum(dG N) A      (N enters A and the projection)
    dZ = LNB(dN) - (r / e) sum(dG G) N                    (the last term: r's own dependence on Z)
"""

from __future__ import annotations

import torch

from ttt_bench.layers.ttt.reconstruction import LN_EPS


def _inner_grad(z, prepared, weight_sq):
    if weight_sq is None:
        return z - prepared
    shape = z.shape[-1:]
    normed, mean, inv_std = torch.native_layer_norm(z, shape, None, None, LN_EPS)
    grad_normed = torch.addcmul(prepared, normed, weight_sq)
    return torch.ops.aten.native_layer_norm_backward(
        grad_normed, z, shape, mean, inv_std, None, None, [True, False, False]
    )[0]


class LinearLearnerScan(torch.autograd.Function):
    """(W0 [BH, e, d], keys [BH, M, b, e], rated [BH, M, b, e], prepared [BH, M, b, d], weight_sq [BH, 1, d]
    or None) -> (starts [BH, M, e, d]: W_m, grads [BH, M, b, d]: G_m, final [BH, e, d]: W_M)."""

    @staticmethod
    def forward(ctx, w0, keys, rated, prepared, weight_sq):
        starts, grads = [], []
        w = w0
        for k_m, r_m, p_m in zip(keys.unbind(1), rated.unbind(1), prepared.unbind(1)):
            starts.append(w)
            g = _inner_grad(k_m @ w, p_m, weight_sq)
            grads.append(g)
            w = torch.baddbmm(w, r_m.transpose(-1, -2), g, alpha=-1.0)
        starts, grads = torch.stack(starts, 1), torch.stack(grads, 1)
        ctx.save_for_backward(keys, rated, prepared, weight_sq, starts, grads)
        return starts, grads, w

    @staticmethod
    def backward(ctx, d_starts, d_grads, d_final):
        keys, rated, prepared, weight_sq, starts, grads = ctx.saved_tensors
        d_starts = torch.zeros_like(starts) if d_starts is None else d_starts
        d_grads = torch.zeros_like(grads) if d_grads is None else d_grads
        carry = torch.zeros_like(starts[:, 0]) if d_final is None else d_final
        width = grads.shape[-1]
        z = keys @ starts  # [BH, M, b, d], recomputed rather than kept from forward
        if weight_sq is not None:
            shape = z.shape[-1:]
            normed, mean, inv_std = torch.native_layer_norm(z, shape, None, None, LN_EPS)
            # LayerNorm's backward op reads mean and 1/std as contiguous rows: slice them mini-batch-major.
            per_chunk = lambda t: t.movedim(1, 0).contiguous()
            z_m, mean_m, inv_std_m = per_chunk(z), per_chunk(mean), per_chunk(inv_std)
            lnb = lambda x, m: torch.ops.aten.native_layer_norm_backward(
                x, z_m[m], shape, mean_m[m], inv_std_m[m], None, None, [True, False, False]
            )[0]
            a = torch.addcmul(prepared, normed, weight_sq[:, None])  # [BH, 1, 1, d] against [BH, M, b, d]
            r_mean_an = inv_std * (a * normed).mean(-1, keepdim=True)
            a_scaled = a * (inv_std / width)
            normed_scaled = normed * (inv_std / width)

        d_z, d_a, carries = [], [], []
        for m in range(keys.shape[1] - 1, -1, -1):
            carries.append(carry)  # dL/dW_{m+1}
            d_g = torch.baddbmm(d_grads[:, m], rated[:, m], carry, alpha=-1.0)
            if weight_sq is None:
                d_z_m = d_g
            else:
                d_a_m = lnb(d_g, m)
                d_normed = d_a_m * weight_sq - r_mean_an[:, m] * d_g
                d_normed = d_normed - a_scaled[:, m] * (d_g * normed[:, m]).sum(-1, keepdim=True)
                d_z_m = lnb(d_normed, m) - normed_scaled[:, m] * (d_g * grads[:, m]).sum(-1, keepdim=True)
                d_a.append(d_a_m)
            d_z.append(d_z_m)
            carry = torch.baddbmm(carry + d_starts[:, m], keys[:, m].transpose(-1, -2), d_z_m)

        d_z = torch.stack(d_z[::-1], 1)
        carries = torch.stack(carries[::-1], 1)
        d_keys = d_z @ starts.transpose(-1, -2)
        d_rated = -(grads @ carries.transpose(-1, -2))
        if weight_sq is None:
            d_prepared, d_weight_sq = -(d_z), None
        else:
            d_prepared = torch.stack(d_a[::-1], 1)
            d_weight_sq = (d_prepared * normed).sum((1, 2))[:, None]
        return carry, d_keys, d_rated, d_prepared, d_weight_sq
