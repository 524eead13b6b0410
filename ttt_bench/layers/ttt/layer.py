"""The TTT layer: a sequence layer whose hidden state is the weights of an inner learner trained on the
sequence itself by gradient steps on a self-supervised reconstruction loss.

One config covers the family: the first paper's MTTT (non-causal, full-sequence inner GD, input
reconstruction through a decoder), the follow-up's TTT-Linear and TTT-MLP (causal mini-batch inner GD,
learned per-token rates, LayerNorm + residual inside the learner, dual and primal forms), and the
Nadaraya-Watson kernel learner, whose inner loop is softmax attention.

Left out of the official layers (outer-block features, not the inner loop): RoPE, the causal
convolution before the inner loop, output gating, and the learned bias on the 1/i token scaling.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ttt_bench.config import check_choice, check_integer, check_positive, knob
from ttt_bench.errors import ConfigError
from ttt_bench.layers import attention
from ttt_bench.layers.base import LayerCost, MixerConfig, SequenceMixer, autograd_backward_macs, projection_macs
from ttt_bench.layers.registry import register
from ttt_bench.layers.state import DecodeState
from ttt_bench.layers.ttt import inner_loop, learners, momentum, muon, reference
from ttt_bench.layers.ttt.gelu import APPROXIMATIONS
from ttt_bench.layers.ttt.inner_loop import Pending
from ttt_bench.layers.ttt.reconstruction import LN_EPS, InputReconstruction, ViewsReconstruction

W0_INIT_STD = 0.02
INNER_OPTIMIZERS = ("gd", "momentum", "muon")
NEWTON_SCHULZ_STEPS = 5  # Muon's and LaCT's
# A forgetting gate starts near remembering everything: sigmoid(-5) = 0.7% forgotten per token.
FORGET_BIAS_INIT = -5.0


@dataclass
class TTTState(DecodeState):
    """A causal mini-batch TTT layer between tokens, per dense layer l of the inner learner, weight and bias
    together as W'_l = [W_l; c_l]: [B, H, d_in + 1, d_out] ([B, H, d_in, d_out] without inner biases).
    Token i = tokens mod b + 1 of the mini-batch in progress reads W_i = weights - s_i * pending."""

    weights: list[torch.Tensor]  # the start weights W' of the mini-batch in progress
    pending: list[torch.Tensor]  # its tokens' rated gradients so far, sum_{j<=i} eta_j grad l_j(W'); zero between


@dataclass
class TTTMomentumState(DecodeState):
    """A causal TTT layer with Titans' update between tokens, per dense layer [B, H, d_in (+ 1), d_out]: the mini-batch
    in progress takes its gradients at `anchor` (its start weights); `weights` is W_t and `velocity` S_t (empty
    without momentum)."""

    anchor: list[torch.Tensor]
    weights: list[torch.Tensor]
    velocity: list[torch.Tensor]


@dataclass
class TTTConfig(MixerConfig):
    learner: str = knob(
        "linear",
        "inner learner f_res: 'linear' (d -> d), 'mlp' (d -> 4d GELU -> d), 'swiglu' (d -> silu(x W_g) * x W_v -> d, "
        "hidden d; LaCT's), 'kernel' (Nadaraya-Watson, exp(k.q))",
    )
    causal: bool = knob(
        True, "True: mini-batch inner GD over the prefix (TTT); False: inner GD over the whole sequence (MTTT)",
    )
    reconstruction: str = knob(
        "views", "'views': k + LN(f_res(k)) ~ v (follow-up paper); 'input': decoder g(f_res(k)) ~ x (first paper)",
    )
    mini_batch: int = knob(16, "causal: tokens per inner GD step (b)")
    inner_steps: int = knob(1, "non-causal: inner GD steps T (the causal loop takes one step per mini-batch)")
    inner_sgd: bool = knob(False, "non-causal: inner step t sees only the t-th of T random splits of the tokens")
    eta_base: float = knob(1.0, "inner learning rate eta_base (> 0)")
    learn_eta: bool = knob(True, "per head and token eta_t = eta_base * sigmoid(theta_lr x_t + b) (else eta_base)")
    eta_over_head_dim: bool = knob(
        True, "divide eta by the head dim d, as the official code does, so eta*||k||^2 stays O(1)",
    )
    token_index_scale: bool = knob(
        True, "causal: token i of a mini-batch reads W - (1/i) sum_{j<=i} eta_j grad_j (official code)",
    )
    learn_w0: bool = knob(
        True, "W0 is an outer-loop parameter (else fixed: zero for 'linear', its random init for 'mlp')",
    )
    inner_bias: bool = knob(True, "the inner learner's dense layers have biases")
    ln_residual: bool = knob(
        True, "'views': f(k) = k + LN(f_res(k)); 'input': LayerNorm on the reconstruction (decoder LN)",
    )
    form: str = knob(
        "dual", "causal: 'dual' (mini-batch matmuls; training, prefill) or 'primal' (token by token; decoding)",
    )
    gelu_approximate: str = knob(
        "none", "'mlp': the GELU between the learner's layers, 'none' (exact, erf) or 'tanh' (the official TTT-MLP's)",
    )
    post_norm: bool = knob(
        False, "LayerNorm over the full width (eps 1e-6, learned affine) before the output projection, as the "
        "official TTT layers apply",
    )
    inner_optimizer: str = knob(
        "gd", "causal inner update: 'gd' (TTT's mini-batch GD), 'momentum' (Titans: S_t = mu_t S_{t-1} - eta_t "
        "grad_t, W_t = W_{t-1} + S_t, mu_t learned per head and token) or 'muon' (LaCT: each mini-batch reads its "
        "start weights, then W <- W - NS(sum of its rated gradients), Newton-Schulz orthogonalised)",
    )
    forget_gate: bool = knob(
        False, "Titans' forgetting: W_t = (1 - alpha_t) W_{t-1} + update, alpha_t = sigmoid(theta_alpha x_t + b) "
        "learned per head and token ('gd' or 'momentum')",
    )
    newton_schulz_steps: int = knob(
        NEWTON_SCHULZ_STEPS,
        "'muon': Newton-Schulz steps orthogonalising each mini-batch's update (0: the summed gradient as it is)",
    )
    weight_norm: bool = knob(
        False, "'muon': after each update rescale every output unit's inner weights to their norm in W0 (LaCT's)",
    )
    checkpoint_group: int = knob(
        0, "causal dual TTT-MLP: keep the inner weights of every c-th mini-batch only and scan and read each group "
        "of c again in the backward (less memory, more time); 0 keeps every mini-batch's",
    )
    compile_scope: str = knob(
        "step", "compile_forms of a causal mini-batch learner: 'step' compiles one step of the loops (a mini-batch "
        "of the scan, the dual readout, a primal token), which Python calls; 'whole' the layer as written",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        name = "ttt"
        check_choice(name, "learner", self.learner, ["linear", "mlp", "swiglu", "kernel"])
        check_choice(name, "inner_optimizer", self.inner_optimizer, list(INNER_OPTIMIZERS))
        check_integer(name, "newton_schulz_steps", self.newton_schulz_steps, 0)
        check_choice(name, "reconstruction", self.reconstruction, ["views", "input"])
        check_choice(name, "form", self.form, ["dual", "primal"])
        check_choice(name, "compile_scope", self.compile_scope, ["step", "whole"])
        check_choice(name, "gelu_approximate", self.gelu_approximate, list(APPROXIMATIONS))
        check_integer(name, "mini_batch", self.mini_batch, 1)
        check_integer(name, "checkpoint_group", self.checkpoint_group, 0)
        check_integer(name, "inner_steps", self.inner_steps, 1)
        check_positive(name, "eta_base", self.eta_base)
        for field in ("causal", "inner_sgd", "learn_eta", "eta_over_head_dim", "token_index_scale",
                      "learn_w0", "inner_bias", "ln_residual", "post_norm", "forget_gate", "weight_norm"):
            check_choice(name, field, getattr(self, field), [True, False])
        if self.causal and (self.inner_steps != 1 or self.inner_sgd):
            raise ConfigError(
                f"{name}: inner_steps={self.inner_steps}, inner_sgd={self.inner_sgd} need causal=False; "
                "the causal loop takes one GD step per mini-batch (set mini_batch instead)"
            )
        if not self.causal and self.form != "primal":
            raise ConfigError(
                f"{name}: form={self.form!r} needs causal=True; the non-causal loop holds W_T explicitly, "
                "so its only form is 'primal'"
            )
        if self.gelu_approximate != "none" and self.learner != "mlp":
            raise ConfigError(
                f"{name}: gelu_approximate={self.gelu_approximate!r} needs learner='mlp'; the {self.learner!r} "
                "learner has no GELU (leave it 'none')"
            )
        mlp_dual = self.learner == "mlp" and self.causal and self.form == "dual" and self.reconstruction == "views"
        if self.checkpoint_group and not mlp_dual:
            raise ConfigError(
                f"{name}: checkpoint_group={self.checkpoint_group} needs learner='mlp', reconstruction='views', "
                "causal=True and form='dual'; only that scan keeps every mini-batch's inner weights (leave it 0)"
            )
        self._check_inner_update(name)
        if self.learner == "kernel" and (self.reconstruction != "views" or self.ln_residual):
            raise ConfigError(
                f"{name}: learner='kernel' needs reconstruction='views' and ln_residual=False; "
                "the kernel estimator memorises (k, v) pairs and has no weights to normalise or decode"
            )


    @property
    def titans(self) -> bool:
        """Titans' update (momentum.py): momentum or a forgetting gate."""
        return self.inner_optimizer == "momentum" or self.forget_gate

    @property
    def steps_compile(self) -> bool:
        """Whether compile_forms can compile one step of the loops (inner_loop.Steps): TTT's GD only."""
        return self.inner_optimizer == "gd" and not self.forget_gate

    def _check_inner_update(self, name: str) -> None:
        """The learners and optimizers beyond TTT's own run the causal views loop only (momentum.py, muon.py)."""
        beyond = self.titans or self.inner_optimizer == "muon" or self.learner == "swiglu"
        causal_views = self.causal and self.reconstruction == "views" and self.learner != "kernel"
        if beyond and not causal_views:
            raise ConfigError(
                f"{name}: learner={self.learner!r}, inner_optimizer={self.inner_optimizer!r}, "
                f"forget_gate={self.forget_gate} need causal=True and reconstruction='views' (and a learner other than "
                "'kernel'); the first paper's non-causal loop and the input loss take TTT's GD with 'linear' or 'mlp'"
            )
        if (self.titans or self.inner_optimizer == "muon") and (self.token_index_scale or not self.learn_w0):
            raise ConfigError(
                f"{name}: inner_optimizer={self.inner_optimizer!r}, forget_gate={self.forget_gate} need "
                "token_index_scale=False and learn_w0=True; the 1/i scale is TTT-GD's own, and their analytic cost "
                "counts a learned W0"
            )
        if self.inner_optimizer == "muon" and (self.forget_gate or self.inner_bias):
            raise ConfigError(
                f"{name}: inner_optimizer='muon' needs forget_gate=False and inner_bias=False; LaCT orthogonalises "
                "bias-free weight matrices and has no forgetting gate"
            )
        if self.inner_optimizer != "muon" and (self.weight_norm or self.newton_schulz_steps != NEWTON_SCHULZ_STEPS):
            raise ConfigError(
                f"{name}: weight_norm={self.weight_norm}, newton_schulz_steps={self.newton_schulz_steps} need "
                f"inner_optimizer='muon' (leave them False and {NEWTON_SCHULZ_STEPS})"
            )
        if beyond and self.checkpoint_group:
            raise ConfigError(f"{name}: checkpoint_group={self.checkpoint_group} needs inner_optimizer='gd', "
                              "forget_gate=False and learner='mlp' (leave it 0)")


@register("ttt-linear")
@register("ttt-linear-primal", form="primal")
@register("ttt-mlp", learner="mlp", eta_base=0.1)
@register("ttt-mlp-primal", learner="mlp", eta_base=0.1, form="primal")
@register("ttt-kernel", learner="kernel", ln_residual=False)
@register(
    "titans-mlp", learner="mlp", eta_base=0.1, inner_optimizer="momentum", forget_gate=True, token_index_scale=False,
)
@register(
    "lact-swiglu", learner="swiglu", inner_optimizer="muon", weight_norm=True, mini_batch=16, inner_bias=False,
    token_index_scale=False,
)
@register(
    "mttt-linear", causal=False, form="primal", reconstruction="input", learner="linear",
    learn_w0=False, inner_bias=False, learn_eta=False, ln_residual=False, eta_base=1.0,
)
@register(
    "mttt-mlp", causal=False, form="primal", reconstruction="input", learner="mlp",
    learn_eta=False, ln_residual=True, eta_base=1.0,
)
@register("mttt-kernel", causal=False, form="primal", learner="kernel", ln_residual=False)
class TTTLayer(SequenceMixer):
    """TTT layer: q, k, v views of x per head; an inner learner trained on (k, target) and read at q."""

    Config = TTTConfig
    # The mini-batch dual form against its token-by-token primal form, which has no scan to checkpoint.
    reference_knobs = {"form": "primal", "checkpoint_group": 0}

    def __init__(self, config: TTTConfig) -> None:
        super().__init__(config)
        d_model, heads, head_dim = config.d_model, config.n_heads, config.head_dim
        if config.reconstruction == "input":
            # The target is x itself, so no value view is projected.
            self.to_qkv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.to_lr = nn.Linear(d_model, heads) if config.learn_eta and config.learner != "kernel" else None
        self.to_momentum = nn.Linear(d_model, heads) if config.inner_optimizer == "momentum" else None
        self.to_forget = None
        if config.forget_gate:
            self.to_forget = nn.Linear(d_model, heads)
            nn.init.constant_(self.to_forget.bias, FORGET_BIAS_INIT)
        if config.learner != "kernel":
            self._init_inner_weights(config)
        if config.ln_residual and config.reconstruction == "views":
            self.ln_weight = nn.Parameter(torch.ones(heads, 1, head_dim))
            self.ln_bias = nn.Parameter(torch.zeros(heads, 1, head_dim))
        if config.reconstruction == "input":
            bound = math.sqrt(3.0 / d_model)  # variance scaling by fan-out, as the first paper's decoder
            self.decoder = nn.Parameter(torch.empty(heads, head_dim, d_model).uniform_(-bound, bound))
            self.decoder_bias = nn.Parameter(torch.zeros(1, 1, d_model))
            if config.ln_residual:
                self.decoder_ln_weight = nn.Parameter(torch.ones(heads, 1, d_model))
                self.decoder_ln_bias = nn.Parameter(torch.zeros(heads, 1, d_model))
        self.post_norm = nn.LayerNorm(d_model, eps=LN_EPS) if config.post_norm else None

    def _init_inner_weights(self, config: TTTConfig) -> None:
        self.n_inner_layers = len(learners.layer_widths(config.learner, config.head_dim))
        for i, (d_in, d_out) in enumerate(learners.layer_widths(config.learner, config.head_dim)):
            zero_fixed = config.learner == "linear" and not config.learn_w0
            weight = torch.zeros(config.n_heads, d_in, d_out)
            if not zero_fixed:
                weight.normal_(0.0, W0_INIT_STD)
            self._add_inner_tensor(f"inner_weight{i}", weight, config.learn_w0)
            if config.inner_bias:
                self._add_inner_tensor(f"inner_bias{i}", torch.zeros(config.n_heads, 1, d_out), config.learn_w0)

    def _add_inner_tensor(self, name: str, value: torch.Tensor, learned: bool) -> None:
        if learned:
            self.register_parameter(name, nn.Parameter(value))
        else:
            self.register_buffer(name, value)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, inner_loop.EAGER)

    def _mix(self, x: torch.Tensor, steps: inner_loop.Steps) -> torch.Tensor:
        cfg = self.config
        if cfg.learner == "kernel":
            q, k, v = self.qkv(x)
            return self.merge_heads_and_project(attention.softmax_attention_sdpa(q, k, v, cfg.causal, scale=1.0))
        batch = x.shape[0]
        o, _ = self.inner_loop(*self.views(x), self.initial_weights(batch), self.head(batch), steps=steps,
                               gates=self.titans_gates(x))
        return self.merge(o)

    def views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The inner loop's inputs, per (sequence, head): q, k: [BH, N, d], target: [BH, N, e] (what the head
        reconstructs), eta: [BH, N]."""
        cfg = self.config
        batch, seq_len, _ = x.shape
        if cfg.reconstruction == "input":
            q, k = (self.split_heads(t) for t in self.to_qkv(x).chunk(2, dim=-1))
        else:
            q, k, v = self.qkv(x)
        flat = lambda t: t.flatten(0, 1)  # [B, H, N, e] -> [BH, N, e]
        q, k = flat(q), flat(k)
        if cfg.reconstruction == "input":
            target = x.unsqueeze(1).expand(batch, cfg.n_heads, seq_len, cfg.d_model).flatten(0, 1)
        else:
            target = flat(v) - k if cfg.ln_residual else flat(v)
        return q, k, target, flat(self.inner_rates(x))

    def merge_heads_and_project(self, o: torch.Tensor) -> torch.Tensor:
        """o: [B, H, N, d] -> [B, N, D], through the full-width LayerNorm first with post_norm."""
        merged = self.merge_heads(o)
        return self.to_out(merged if self.post_norm is None else self.post_norm(merged))

    def merge(self, o: torch.Tensor) -> torch.Tensor:
        """The inner loop's output o: [BH, N, d] -> [B, N, D] through the output projection."""
        return self.merge_heads_and_project(o.unflatten(0, (-1, self.config.n_heads)))

    def inner_loop(self, q, k, target, eta, params, head, use_reference: bool = False,
                   steps: inner_loop.Steps | None = None, gates: tuple | None = None):
        """The configured inner loop on [BH, N, .] tensors from W0 -> (output [BH, N, d], final weights); gates:
        titans_gates' (momentum, retention). Decoding goes on from a state in _decode instead."""
        cfg = self.config
        if cfg.inner_optimizer == "muon":
            run = {"dual": muon.causal_chunked, "primal": muon.causal_primal}[cfg.form]
            run = reference.muon_reference if use_reference else run
            return run(q, k, target, eta, params, head, cfg.mini_batch, cfg.newton_schulz_steps, cfg.weight_norm,
                       cfg.gelu_approximate)
        if cfg.titans:
            run = {"dual": momentum.causal_chunked, "primal": momentum.causal_primal}[cfg.form]
            run = reference.momentum_reference if use_reference else run
            return run(q, k, target, eta, *gates, params, head, cfg.mini_batch, gelu_approximate=cfg.gelu_approximate)
        if not cfg.causal:
            order = None
            if cfg.inner_sgd:
                order = torch.randperm(q.shape[1], device=q.device)
            run = reference.full_batch_reference if use_reference else inner_loop.full_batch
            return run(q, k, target, eta, params, head, cfg.inner_steps, order, gelu_approximate=cfg.gelu_approximate)
        if use_reference:
            return reference.causal_reference(q, k, target, eta, params, head, cfg.mini_batch, cfg.token_index_scale,
                                              gelu_approximate=cfg.gelu_approximate)
        if cfg.form == "dual":
            return inner_loop.causal_dual(q, k, target, eta, params, head, cfg.mini_batch, cfg.token_index_scale,
                                          steps, gelu_approximate=cfg.gelu_approximate,
                                          checkpoint_group=cfg.checkpoint_group)
        return inner_loop.causal_primal(q, k, target, eta, params, head, cfg.mini_batch, cfg.token_index_scale, steps,
                                        gelu_approximate=cfg.gelu_approximate)

    def decode(self, x: torch.Tensor, state: TTTState | attention.KVCache | None):
        return self._decode(x, state, inner_loop.EAGER)

    def _decode(self, x: torch.Tensor, state, steps: inner_loop.Steps):
        """x: [B, n, D] from `state` (None: before the first token) -> (y [B, n, D], the state after x). A prefill
        (n > 1) runs the dual form over whole mini-batches; a step (n = 1) or the primal form runs token by token."""
        self._check_decodes()  # MTTT trains on the whole sequence: it has no causal recurrence to run
        cfg = self.config
        if cfg.learner == "kernel":
            q, k, v = self.qkv(x)
            cache = attention.KVCache.extend(state, k, v)
            # One query sees the whole cache: no mask to build.
            o = attention.softmax_attention_sdpa(q, *cache.read(), x.shape[1] > 1, scale=1.0)
            return self.merge_heads_and_project(o), cache
        batch, heads = x.shape[0], cfg.n_heads
        flat = lambda tensors: [t.flatten(0, 1) for t in tensors]
        per_sequence = lambda tensors: [t.unflatten(0, (batch, heads)) for t in tensors]
        tokens = x.shape[1] + (0 if state is None else state.tokens)
        learner = learners.Learner((cfg.inner_bias,) * self.n_inner_layers, cfg.gelu_approximate,
                                   cfg.learner == "swiglu")
        position = 0 if state is None else state.tokens % cfg.mini_batch
        prefill = cfg.form == "dual" and x.shape[1] > 1
        start = None if state is not None else learners.augment(self.initial_weights(batch))[0]
        if cfg.titans:
            if state is None:
                carried = momentum.MomentumState.start(start, learner, momentum=False)  # the first token makes S
            else:
                velocity = flat(state.velocity) if state.velocity else None
                carried = momentum.MomentumState(flat(state.anchor), flat(state.weights), velocity, position, learner)
            run = momentum.causal_chunked if prefill else momentum.causal_primal
            o, carried = run(*self.views(x), *self.titans_gates(x), carried, self.head(batch), cfg.mini_batch)
            velocity = [] if carried.velocity is None else per_sequence(carried.velocity)
            return self.merge(o), TTTMomentumState(tokens, per_sequence(carried.anchor),
                                                   per_sequence(carried.weights), velocity)
        if state is None:
            pending = Pending.start(start, learner)
        else:
            pending = Pending(flat(state.weights), flat(state.pending), position, learner)
        if cfg.inner_optimizer == "muon":
            run = muon.causal_chunked if prefill else muon.causal_primal
            o, pending = run(*self.views(x), pending, self.head(batch), cfg.mini_batch, cfg.newton_schulz_steps,
                             cfg.weight_norm, norms=self._initial_column_norms(batch))
        else:
            run = inner_loop.causal_dual if prefill else inner_loop.causal_primal
            o, pending = run(*self.views(x), pending, self.head(batch), cfg.mini_batch, cfg.token_index_scale, steps)
        return self.merge(o), TTTState(tokens, per_sequence(pending.weights), per_sequence(pending.accumulated))

    def _initial_column_norms(self, batch: int) -> list[torch.Tensor] | None:
        """'muon' with weight_norm: W0's column norms, which every update is rescaled to; None without weight norm."""
        if not self.config.weight_norm:
            return None
        return muon.column_norms(learners.augment(self.initial_weights(batch))[0])

    def titans_gates(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Titans' data-dependent momentum mu_t = sigmoid(theta_mu x_t + b) and retention 1 - alpha_t =
        1 - sigmoid(theta_alpha x_t + b), per (sequence, head): [BH, N] each, None where the config has none."""
        rate = lambda projection: torch.sigmoid(projection(x)).transpose(1, 2).flatten(0, 1)
        mu = None if self.to_momentum is None else rate(self.to_momentum)
        retain = None if self.to_forget is None else 1 - rate(self.to_forget)
        return mu, retain

    def compile_forms(self, **options: Any) -> dict[str, Callable]:
        """With compile_scope='step', a causal mini-batch learner's forward and prefill keep their Python loops and
        call steps compiled once each (inner_loop.compiled_steps), handed to them as an argument; a decoding step
        (one token) has no loop, so it is compiled whole, projections included (on this CPU that halved TTT-Linear's
        step, where compiling only its primal step gained 1.1x). The layer itself, self(x) and self.decode, stays
        eager, and the compiled forms share its parameters. The kernel learner and MTTT have no loop over
        mini-batches, so they are compiled whole, as is everything with compile_scope='whole'."""
        cfg = self.config
        if cfg.compile_scope == "whole" or cfg.learner == "kernel" or not cfg.causal or not cfg.steps_compile:
            return super().compile_forms(**options)
        steps = inner_loop.compiled_steps(**options)
        one_token = torch.compile(self.decode, **options)

        def forward(x: torch.Tensor) -> torch.Tensor:
            self.check_input(x)
            return self._mix(x, steps)

        def decode(x: torch.Tensor, state: TTTState | None) -> tuple[torch.Tensor, TTTState]:
            return one_token(x, state) if x.shape[1] == 1 else self._decode(x, state, steps)

        return {"forward": forward, "decode": decode}

    def decode_state_numel(self, batch: int, context: int) -> int:
        self._check_decodes()
        cfg = self.config
        if cfg.learner == "kernel":
            return attention.KVCache.buffer_numel(batch, context, cfg.d_model)
        # The start weights (the cost's state: weights and biases per sequence) and the pending gradients, as large;
        # Titans' update holds its anchor and current weights, and its velocity with momentum.
        copies = 2 + (cfg.inner_optimizer == "momentum") if cfg.titans else 2
        return copies * batch * self.cost(1, 1).state_numel

    def inner_rates(self, x: torch.Tensor) -> torch.Tensor:
        """eta: [B, H, N]."""
        cfg = self.config
        scale = cfg.eta_base / cfg.head_dim if cfg.eta_over_head_dim else cfg.eta_base
        batch, seq_len, _ = x.shape
        if self.to_lr is None:
            return torch.full((batch, cfg.n_heads, seq_len), scale, dtype=x.dtype, device=x.device)
        return scale * torch.sigmoid(self.to_lr(x)).transpose(1, 2)

    def initial_weights(self, batch: int) -> list[learners.Dense]:
        """W0 per (sequence, head): dense layers [BH, d_in, d_out], [BH, 1, d_out] or None."""
        expand = lambda t: t.expand(batch, *t.shape).flatten(0, 1)
        layers = []
        for i in range(self.n_inner_layers):
            bias = getattr(self, f"inner_bias{i}", None)
            layers.append((expand(getattr(self, f"inner_weight{i}")), None if bias is None else expand(bias)))
        return layers

    def head(self, batch: int):
        """The reconstruction loss with its per-head parameters expanded to [BH, ...]."""
        expand = lambda t: None if t is None else t.expand(batch, *t.shape).flatten(0, 1)
        if self.config.reconstruction == "input":
            return InputReconstruction(
                expand(self.decoder), self.decoder_bias,
                expand(getattr(self, "decoder_ln_weight", None)), expand(getattr(self, "decoder_ln_bias", None)),
            )
        return ViewsReconstruction(expand(getattr(self, "ln_weight", None)), expand(getattr(self, "ln_bias", None)))

    def cost(self, batch: int, seq_len: int) -> LayerCost:
        cfg = self.config
        heads, d, d_model = cfg.n_heads, cfg.head_dim, cfg.d_model
        tokens, sequences = batch * seq_len, batch * heads  # sequences: one inner loop per (sequence, head)
        n_views = 2 if cfg.reconstruction == "input" else 3
        macs = projection_macs(batch, seq_len, d_model, (n_views + 1) * d_model)
        gates = [g for g in (self.to_lr, self.to_momentum, self.to_forget) if g is not None]
        macs += len(gates) * projection_macs(batch, seq_len, d_model, heads)
        if cfg.learner == "kernel":
            executed, useful = attention.attention_macs(batch, heads, seq_len, d, cfg.causal)
            backward = autograd_backward_macs(macs) + attention.attention_backward_macs(
                batch, heads, seq_len, d, "sdpa")
            return LayerCost(tokens, macs + executed, macs + useful, backward, None)

        widths = learners.layer_widths(cfg.learner, d)
        # The fast forms carry each bias as a row of an augmented weight acting on [x, 1], so that row
        # is counted as executed matmul work (one more input feature per layer).
        aug = [(d_in + int(cfg.inner_bias), d_out) for d_in, d_out in widths]
        dense_macs = sum(a * b for a, b in aug)  # one token through f_res
        backprop_macs = sum(a * b for a, b in widths[1:])  # G_l = G_{l+1} W_{l+1}^T
        decoder_macs = 2 * d * d_model if cfg.reconstruction == "input" else 0  # decode, and its backward
        # Per training token: forward, backward to each layer, and the weight update X^T G.
        train_token = dense_macs + backprop_macs + decoder_macs + dense_macs
        lanes = batch * heads * seq_len  # token positions over all (sequence, head) inner loops
        state = heads * sum(a * b + (b if cfg.inner_bias else 0) for a, b in widths)
        if cfg.inner_optimizer == "muon":
            # muon.py: every token is read out at its chunk's start weights; the tokens of complete chunks train (a
            # trailing partial chunk's update would come after the last token); one Newton-Schulz per complete chunk
            # and layer. The last chunk's training and update only make the final weights when it ends the sequence.
            full, rest = divmod(seq_len, cfg.mini_batch)
            update = sum(muon.newton_schulz_macs(a, b, cfg.newton_schulz_steps) for a, b in aug)
            chunk = cfg.mini_batch * train_token + update
            executed = seq_len * dense_macs + full * chunk
            final_state = sequences * chunk if full and not rest else 0
            if seq_len <= cfg.mini_batch and self.to_lr is not None:  # no token reads an update: nor the rates
                final_state += projection_macs(batch, seq_len, d_model, heads)
            forward = macs + sequences * executed
            return LayerCost(tokens, forward, forward, autograd_backward_macs(forward, final_state), state,
                             final_state_macs=final_state)
        if cfg.titans:
            backprop_widths = widths[1:]
            if cfg.form == "primal":  # every token's update is read at its own query
                per_sequence = momentum.primal_macs(seq_len, aug, backprop_widths)
                forward = macs + sequences * per_sequence
                return LayerCost(tokens, forward, forward, autograd_backward_macs(forward), state)
            chunked = momentum.chunked_macs(seq_len, cfg.mini_batch, aug, backprop_widths,
                                            cfg.inner_optimizer == "momentum", cfg.forget_gate)
            forward = macs + sequences * chunked.forward_macs
            # The n x n scores within a mini-batch are executed dense: useful counts their pairs s <= t only.
            square, triangle = _mini_batch_pairs(seq_len, cfg.mini_batch)
            useful = forward - sequences * (square - triangle) * sum(a + b for a, b in aug)
            backward = autograd_backward_macs(macs) + sequences * chunked.backward_macs
            return LayerCost(tokens, forward, useful, backward, state,
                             final_state_macs=sequences * chunked.final_state_macs)
        final_state = 0
        if not cfg.causal:
            trained = lanes if cfg.inner_sgd else cfg.inner_steps * lanes  # SGD: each token once
            executed = useful = trained * train_token + lanes * dense_macs
            first_step_tokens = -(-seq_len // cfg.inner_steps) if cfg.inner_sgd else seq_len
        elif cfg.form == "primal":
            # Each token also reads its own materialised weights at q.
            executed = useful = lanes * (train_token + dense_macs)
            first_step_tokens = min(cfg.mini_batch, seq_len)
        else:
            # Per mini-batch of length b: X~ X^T (b x b x d_in) and (eta~ * .) G (b x b x d_out) per layer.
            per_pair = sum(d_in + d_out for d_in, d_out in aug)
            square, triangle = _mini_batch_pairs(seq_len, cfg.mini_batch)
            base = lanes * (train_token + dense_macs)
            executed = base + sequences * square * per_pair
            useful = base + sequences * triangle * per_pair
            first_step_tokens = min(cfg.mini_batch, seq_len)
        forward = macs + executed
        if self._uses_linear_scan():
            # The hand-written backward (linear_scan.py) recomputes Z = K W per mini-batch for LayerNorm.
            backward = autograd_backward_macs(forward) + (lanes * dense_macs if cfg.ln_residual else 0)
        elif self._uses_mlp_scan():
            # The hand-written backward (mlp_scan.py): two products per forward product, the last mini-batch's update
            # included (its carry is zero, not skipped), plus what checkpoint_group runs again.
            backward = autograd_backward_macs(forward) + sequences * self._recomputed_macs(seq_len, aug, backprop_macs)
        else:
            if cfg.causal and cfg.form == "dual":
                # The last mini-batch's update X^T G only makes the final weights, which no output reads.
                final_state = sequences * (seq_len % cfg.mini_batch or min(cfg.mini_batch, seq_len)) * dense_macs
            backward = autograd_backward_macs(forward, final_state)
            if not cfg.learn_w0:
                # The first inner step's forward and backprop products read the fixed W0: one product each;
                # so do the dual readouts of a first run of one mini-batch, which all start at W0.
                fixed_reads = dense_macs + backprop_macs
                if cfg.causal and cfg.form == "dual" and seq_len < 2 * cfg.mini_batch:
                    fixed_reads += dense_macs
                backward -= sequences * first_step_tokens * fixed_reads
        return LayerCost(tokens, forward, macs + useful, backward, state, final_state_macs=final_state)

    def _uses_mlp_scan(self) -> bool:
        """The causal dual form of the MLP learner with the views loss runs mlp_scan.py (inner_loop.causal_dual)."""
        cfg = self.config
        return cfg.causal and cfg.form == "dual" and cfg.learner == "mlp" and cfg.reconstruction == "views"

    def _recomputed_macs(self, seq_len: int, aug: list[tuple[int, int]], backprop_macs: int) -> int:
        """Per (sequence, head), the products checkpoint_group > 0 runs again in the backward (mlp_scan.py): each
        group's scan, less its last mini-batch's update (the next group's saved start), and its readout."""
        group, b = self.config.checkpoint_group, self.config.mini_batch
        if not group:
            return 0
        dense, per_pair = sum(a * c for a, c in aug), sum(a + c for a, c in aug)
        full, rest = divmod(seq_len, b)
        macs = 0
        for chunks, size in ((full, b), (int(rest > 0), rest)):  # causal_dual scans whole mini-batches, then the rest
            groups = -(-chunks // group)
            macs += chunks * size * (3 * dense + backprop_macs + size * per_pair) - groups * size * dense
        return macs

    def _uses_linear_scan(self) -> bool:
        """The causal dual form of a linear learner with the views loss runs linear_scan.py (inner_loop.causal_dual)."""
        cfg = self.config
        return cfg.causal and cfg.form == "dual" and cfg.learner == "linear" and cfg.reconstruction == "views"


def _mini_batch_pairs(seq_len: int, mini_batch: int) -> tuple[int, int]:
    """(dense, causal) token pairs (i, j) inside the mini-batches of a sequence, the last one N mod b long: b x b per
    mini-batch as the dual forms execute their scores, and the pairs j <= i a token reads."""
    full, rest = divmod(seq_len, mini_batch)
    return (full * mini_batch**2 + rest**2,
            full * mini_batch * (mini_batch + 1) // 2 + rest * (rest + 1) // 2)
