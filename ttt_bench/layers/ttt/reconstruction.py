"""The inner loop's self-supervised losses: what the learner's output z = f_res(theta_K x) must reconstruct.

`views` (the follow-up paper, TTT-Linear/MLP): f(k) = k + LN(f_res(k)) should match the value view v,
  per token l = 1/2 ||LN(z) - (v - k)||^2 (with ln_residual), or 1/2 ||z - v||^2 (without).
`input` (the first paper, MTTT): a decoder g (per head d -> D, optional LayerNorm over D) maps z back to
  the token itself, l = 1/2 ||g(z) - x||^2.

Each head gives the per-token gradient dl/dz in closed form (`grad`, used by the fast forms, on a target
`prepare`d once outside their loops), the same loss through autograd (`loss`, used only by the
references) and the layer's readout of a query.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LN_EPS = 1e-6


def layer_norm(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last dim with per-head affine weight, bias: [BH, 1, e]."""
    return F.layer_norm(z, z.shape[-1:], eps=LN_EPS) * weight + bias


def prepare_layer_norm_target(target: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(bias - target) * weight: the part of the LayerNorm-L2 gradient that does not depend on z."""
    return (bias - target) * weight


def layer_norm_l2_grad(z: torch.Tensor, weight_sq: torch.Tensor, prepared: torch.Tensor) -> torch.Tensor:
    """d/dz of 1/2 ||LN(z) w + b - t||^2, given w^2 and prepared = (b - t) w. z: [..., n, e].

    LayerNorm's own backward op does the chain rule through the normalisation in one call; it is
    differentiable again (the outer loop needs that), and mean and 1/std enter it detached because its
    double backward recomputes their dependence on z itself. `torch.jit.trace` cannot record that op
    (its output mask is an argument type the tracer lacks), so a trace takes the same gradient in
    closed form, r (A - mean(A) - N mean(A N)) with N = LN(z), r = 1/std(z), A = N w^2 + prepared.
    """
    shape = z.shape[-1:]
    # Under autocast z comes from a low-precision matmul while w and t are float32: one dtype for the whole
    # gradient (a no-op without autocast).
    z = z.to(torch.promote_types(z.dtype, prepared.dtype))
    normed, mean, inv_std = torch.native_layer_norm(z, shape, None, None, LN_EPS)
    grad_normed = torch.addcmul(prepared, normed, weight_sq)  # (LN(z) w + b - t) w
    if torch.jit.is_tracing():
        centred = grad_normed - grad_normed.mean(-1, keepdim=True)
        return (centred - normed * (grad_normed * normed).mean(-1, keepdim=True)) * inv_std
    return layer_norm_backward(grad_normed, z, shape, mean.detach(), inv_std.detach())


def scan_layer_norm_l2_grad(z: torch.Tensor, weight_sq: torch.Tensor, prepared: torch.Tensor) -> torch.Tensor:
    """layer_norm_l2_grad in three ops, for a hand-written scan's step (operands of one dtype, outside autograd);
    under a tracer (fvcore), which cannot record LayerNorm's backward op, layer_norm_l2_grad's closed form."""
    if torch.jit.is_tracing():
        return layer_norm_l2_grad(z, weight_sq, prepared)
    shape = z.shape[-1:]
    normed, mean, inv_std = torch.native_layer_norm(z, shape, None, None, LN_EPS)
    return layer_norm_backward(torch.addcmul(prepared, normed, weight_sq), z, shape, mean, inv_std)


_NATIVE_LAYER_NORM_BACKWARD = torch.ops.aten.native_layer_norm_backward.default
_INPUT_GRAD_ONLY = [True, False, False]


def layer_norm_backward(grad, z, shape, mean, inv_std):
    """LNB(grad) = r (grad - mean(grad) - N mean(grad N)), N = LN(z), r = 1 / std(z): LayerNorm's input gradient,
    from the statistics native_layer_norm returned for z, in one op."""
    return _NATIVE_LAYER_NORM_BACKWARD(grad, z, shape, mean, inv_std, None, None, _INPUT_GRAD_ONLY)[0]



class LayerNormL2Backward:
    """The vector-Jacobian product of layer_norm_l2_grad for a hand-written scan's mini-batches (linear_scan.py,
    mlp_scan.py). With G = LNB(A), A = P + N s, N = LN(Z), r = 1 / std(Z), e the width and LNB linear per row
    (LNB(dG) = dA, LNB(A) = G), for an incoming dG:
        dA = LNB(dG),   dZ = LNB(dA s) - r mean(A N) dA - (r / e) sum(dG N) G - (r / e) sum(dG G) N,
    and dP = dA, ds = sum(dA N). Every factor that does not depend on dG is made here for all mini-batches
    [M, ...] at once; `per_step` are their per-mini-batch views, which `step` takes after the step's dG and G."""

    def __init__(self, z: torch.Tensor, prepared: torch.Tensor, weight_sq: torch.Tensor, grads: torch.Tensor) -> None:
        self.z, self.weight_sq, self.shape = z, weight_sq, z.shape[-1:]
        self.normed, self.mean, self.inv_std = torch.native_layer_norm(z, self.shape, None, None, LN_EPS)
        a = torch.addcmul(prepared, self.normed, weight_sq)  # weight_sq [BH, 1, d] against [M, BH, b, d]
        c1 = self.inv_std * (a * self.normed).mean(-1, keepdim=True)
        # [N; G] r / e side by side, so that both row dots with dG take one product and one sum.
        scaled = torch.stack([self.normed, grads], dim=-2) * (self.inv_std / self.shape[0])[..., None]
        self.per_step = [x.unbind(0) for x in (z, self.mean, self.inv_std, c1, self.normed, scaled)]

    def step(self, d_g, g, z, mean, inv_std, c1, normed, scaled, out: torch.Tensor | None = None) -> torch.Tensor:
        """dZ of one mini-batch from its dG and G (and its per_step views), into `out` if given."""
        d_a = layer_norm_backward(d_g, z, self.shape, mean, inv_std)
        dots = (d_g[..., None, :] * scaled).sum(-1)  # [BH, b, 2]: (r / e) sum(dG N), (r / e) sum(dG G)
        d_z = layer_norm_backward(d_a * self.weight_sq, z, self.shape, mean, inv_std)
        addcmul = torch.addcmul
        return addcmul(addcmul(addcmul(d_z, c1, d_a, value=-1.0), dots[..., :1], g, value=-1.0), dots[..., 1:],
                       normed, value=-1.0, out=d_z if out is None else out)

    def input_grads(self, d_g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(dP, ds) from every mini-batch's dG [M, ...] at once."""
        d_prepared = layer_norm_backward(d_g, self.z, self.shape, self.mean, self.inv_std)
        return d_prepared, (d_prepared * self.normed).sum((0, 2))[:, None]

class ViewsReconstruction:
    """f(k) = k + LN(f_res(k)) ~ v (ln_residual) or f_res(k) ~ v; the target passed in is v - k or v."""

    def __init__(self, ln_weight: torch.Tensor | None, ln_bias: torch.Tensor | None) -> None:
        self.ln_weight, self.ln_bias = ln_weight, ln_bias
        self.ln_weight_sq = None if ln_weight is None else ln_weight * ln_weight

    @property
    def ln_residual(self) -> bool:
        return self.ln_weight is not None

    def prepare(self, target: torch.Tensor) -> torch.Tensor:
        if self.ln_residual:
            return prepare_layer_norm_target(target, self.ln_weight, self.ln_bias)
        return target

    def grad(self, z: torch.Tensor, prepared: torch.Tensor) -> torch.Tensor:
        if self.ln_residual:
            return layer_norm_l2_grad(z, self.ln_weight_sq, prepared)
        return z - prepared

    def loss(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-token loss [BH, n]."""
        y = layer_norm(z, self.ln_weight, self.ln_bias) if self.ln_residual else z
        return 0.5 * ((y - target) ** 2).sum(-1)

    def readout(self, z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """The layer's output for queries q with learner output z = f_res(q)."""
        return q + layer_norm(z, self.ln_weight, self.ln_bias) if self.ln_residual else z


class InputReconstruction:
    """g(z) = LN(z G + c) (decoder LN) or z G + c ~ x, with decoder G: [BH, d, D] and c: [1, 1, D]."""

    def __init__(
        self,
        decoder: torch.Tensor,
        decoder_bias: torch.Tensor,
        ln_weight: torch.Tensor | None,
        ln_bias: torch.Tensor | None,
    ) -> None:
        self.decoder, self.decoder_bias = decoder, decoder_bias
        self.ln_weight, self.ln_bias = ln_weight, ln_bias
        self.ln_weight_sq = None if ln_weight is None else ln_weight * ln_weight

    def prepare(self, target: torch.Tensor) -> torch.Tensor:
        if self.ln_weight is not None:
            return prepare_layer_norm_target(target, self.ln_weight, self.ln_bias)
        return target

    def grad(self, z: torch.Tensor, prepared: torch.Tensor) -> torch.Tensor:
        decoded = z @ self.decoder + self.decoder_bias
        if self.ln_weight is not None:
            grad_decoded = layer_norm_l2_grad(decoded, self.ln_weight_sq, prepared)
        else:
            grad_decoded = decoded - prepared
        return grad_decoded @ self.decoder.transpose(-1, -2)

    def loss(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        decoded = z @ self.decoder + self.decoder_bias
        if self.ln_weight is not None:
            decoded = layer_norm(decoded, self.ln_weight, self.ln_bias)
        return 0.5 * ((decoded - target) ** 2).sum(-1)

    def readout(self, z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """MTTT outputs the encoder's features f(theta_Q x; W_T) themselves; the decoder only trains."""
        return z
