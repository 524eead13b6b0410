"""TTT-MLP's hand-differentiated dual-form scan (mlp_scan.py) against the scan autograd differentiates
(inner_loop._scan, with _dual_readout for the checkpointed form) and, through causal_dual, against the reference
loop: outputs, final weights and every gradient, float64 (1e-10) and float32 (1e-4); the checkpoint_group knob's
validation, its cost and its memory."""

import pytest
import torch
from checks import RTOL, assert_forms_agree
from torch.autograd.function import once_differentiable

from ttt_bench.errors import ConfigError
from ttt_bench.layers import build
from ttt_bench.layers.base import with_ones
from ttt_bench.layers.ttt import inner_loop, learners, reference
from ttt_bench.layers.ttt.layer import TTTLayer
from ttt_bench.layers.ttt.mlp_scan import MLPCheckpointedScan, _backward, _carries, _forward, _Inputs, _Run
from ttt_bench.layers.ttt.reconstruction import ViewsReconstruction
from ttt_bench.profile.memory import measure_peak_bytes

BH, D = 3, 6  # the hidden width is 4 D = 24


class MLPLearnerScan(torch.autograd.Function):
    """(W1 [BH, e1, h], W2 [BH, e2, d], keys X1 [M, BH, b, e1], rated R1 [M, BH, b, e1], prepared [M, BH, b, d],
    last rates [M, BH, b], weight_sq [BH, 1, d] or None, approximate) -> (starts W1 [M, BH, e1, h], W2
    [M, BH, e2, d], X2 [M, BH, b, e2], G1 [M, BH, b, h], G2 [M, BH, b, d], final W1, W2): what inner_loop._scan
    gives, for its batched readout. e_l = input width + 1 with inner biases. The layer runs MLPCheckpointedScan
    (checkpoint_group = 0 too); this is the scan's two engines alone, so a test sees a gradient on every output."""

    @staticmethod
    def forward(ctx, w1, w2, keys, rated, prepared, last, weight_sq, approximate):
        inp = _Inputs(keys, rated, prepared, last, weight_sq, approximate)
        run = _forward(inp, w1, w2)
        ctx.approximate = approximate
        ctx.save_for_backward(keys, rated, prepared, last, weight_sq, *run.saved())
        return run.starts1, run.starts2, run.x2, run.g1, run.g2, run.final1.clone(), run.final2.clone()

    @staticmethod
    @once_differentiable  # written with in-place accumulation: a second derivative through it is refused, not wrong
    def backward(ctx, d_starts1, d_starts2, d_x2, d_g1, d_g2, d_final1, d_final2):
        keys, rated, prepared, last, weight_sq, *saved = ctx.saved_tensors
        run = _Run(*saved)
        carry1, carry2 = _carries(d_final1, d_final2, run.starts1[0], run.starts2[0])
        grads = _backward(_Inputs(keys, rated, prepared, last, weight_sq, ctx.approximate), run, carry1, carry2,
                          d_starts1, d_starts2, d_x2, d_g1, d_g2)
        return carry1, carry2, grads.keys, grads.rated, grads.prepared, grads.last, grads.weight_sq, None


def scan_inputs(seed, n_chunks, b, bias, ln, dtype, readout=False):
    """The scan's inputs as independent leaves, so that each gets its own gradient: W1 [BH, e1, h], W2 [BH, e2, d],
    keys before augmentation, rated keys, the prepared target, the last rates, the LayerNorm weight (its square
    enters), and for the checkpointed form queries and readout rates."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape, scale=1.0: scale * torch.randn(*shape, generator=g, dtype=dtype)
    e1, e2 = D + bias, 4 * D + bias
    inputs = {
        "w1": rand(BH, e1, 4 * D, scale=e1**-0.5),
        "w2": rand(BH, e2, D, scale=e2**-0.5),
        "k": rand(n_chunks, BH, b, D),
        "rated": rand(n_chunks, BH, b, e1, scale=0.2),
        "prepared": rand(n_chunks, BH, b, D),
        "last": 0.3 * torch.rand(n_chunks, BH, b, generator=g, dtype=dtype),
    }
    if ln:
        inputs["ln_w"] = 1.0 + rand(BH, 1, D, scale=0.1)
    if readout:
        inputs["q"] = rand(n_chunks, BH, b, D)
        inputs["rates"] = 0.3 * torch.rand(n_chunks, BH, b, b, generator=g, dtype=dtype).tril()
    return inputs


def autograd_scan(bias, approximate, w1, w2, k, rated, prepared, last, ln_w=None):
    """inner_loop._scan, the form autograd differentiates, on the same inputs."""
    head = ViewsReconstruction(ln_w, None if ln_w is None else torch.zeros_like(ln_w))  # the bias enters via prepared
    keys = with_ones(k) if bias else k
    learner = learners.Learner((bias, bias), approximate)
    final, (starts, inputs, grads) = inner_loop._scan(
        [w1, w2], learner, head, keys, rated, prepared, last, inner_loop._scan_step
    )
    return keys, learner, final, starts, inputs, grads


def hand_scan(bias, approximate):
    def form(w1, w2, k, rated, prepared, last, ln_w=None):
        keys = with_ones(k) if bias else k
        return MLPLearnerScan.apply(w1, w2, keys, rated, prepared, last, None if ln_w is None else ln_w * ln_w,
                                    approximate)

    return form


def reference_scan(bias, approximate):
    def form(**inputs):
        _, _, final, starts, inputs, grads = autograd_scan(bias, approximate, **inputs)
        return starts[0], starts[1], inputs[1], grads[0], grads[1], final[0], final[1]

    return form


def readout_of(learner):
    """The checkpointed form's readout: _dual_readout without the head (one without LayerNorm reads z out as z)."""
    return lambda q, s, x, g, r: inner_loop._dual_readout(q, s, x, g, learner, r, ViewsReconstruction(None, None))


def hand_checkpointed(bias, approximate, group, keep=False):
    def form(w1, w2, k, rated, prepared, last, q, rates, ln_w=None):
        keys = with_ones(k) if bias else k
        readout = readout_of(learners.Learner((bias, bias), approximate))
        return MLPCheckpointedScan.apply(w1, w2, keys, rated, prepared, last, None if ln_w is None else ln_w * ln_w,
                                         q, rates, approximate, group, readout, keep)

    return form


def reference_checkpointed(bias, approximate):
    def form(q, rates, **inputs):
        keys, learner, final, starts, inputs, grads = autograd_scan(bias, approximate, **inputs)
        return readout_of(learner)(q, starts, inputs, grads, rates), final[0], final[1]

    return form


SCAN_CASES = [
    # bias, ln, approximate, mini-batches M, mini-batch b
    (True, True, "none", 5, 4),
    (True, False, "none", 5, 4),
    (False, True, "none", 5, 4),
    (False, False, "none", 5, 4),
    (True, True, "tanh", 5, 4),
    (False, False, "tanh", 3, 4),
    (True, True, "none", 7, 1),
    (True, True, "tanh", 1, 3),
]


@pytest.mark.parametrize("bias,ln,approximate,n_chunks,b", SCAN_CASES)
def test_scan_matches_the_autograd_scan(bias, ln, approximate, n_chunks, b):
    """Starts of both layers, X2, G1, G2 and the final weights, and the gradients of W0 (both layers), keys, rated
    keys, the prepared target, the last rates and the LayerNorm weight."""
    inputs = scan_inputs(n_chunks * 10 + b, n_chunks, b, bias, ln, torch.float64)
    assert_forms_agree(hand_scan(bias, approximate), reference_scan(bias, approximate), inputs, RTOL[torch.float64])


CHECKPOINT_CASES = [
    # bias, ln, approximate, M, b, group: groups that divide M, that do not, of one, of M and larger than M
    (True, True, "none", 6, 4, 2),
    (True, True, "none", 7, 4, 3),
    (False, False, "none", 7, 4, 1),
    (True, False, "tanh", 5, 4, 5),
    (False, True, "tanh", 5, 4, 9),
    (True, True, "tanh", 7, 1, 4),
]


@pytest.mark.parametrize("bias,ln,approximate,n_chunks,b,group", CHECKPOINT_CASES)
def test_checkpointed_scan_matches_the_autograd_scan_and_readout(bias, ln, approximate, n_chunks, b, group):
    """The readout's pre-head output and the final weights, and every gradient, queries and readout rates too."""
    inputs = scan_inputs(n_chunks * 10 + group, n_chunks, b, bias, ln, torch.float64, readout=True)
    assert_forms_agree(hand_checkpointed(bias, approximate, group), reference_checkpointed(bias, approximate),
                       inputs, RTOL[torch.float64])


@pytest.mark.parametrize("bias,ln,approximate,n_chunks,b,group", [CHECKPOINT_CASES[1], CHECKPOINT_CASES[3]])
def test_kept_groups_match_the_autograd_scan_and_readout(bias, ln, approximate, n_chunks, b, group):
    """keep (checkpoint_group = 0 in groups): every group's scan and readout graph kept rather than recomputed."""
    inputs = scan_inputs(n_chunks * 10 + group, n_chunks, b, bias, ln, torch.float64, readout=True)
    kept = hand_checkpointed(bias, approximate, group, keep=True)
    assert_forms_agree(kept, reference_checkpointed(bias, approximate), inputs, RTOL[torch.float64])


@pytest.mark.parametrize("group", [0, 3])
def test_float32_matches_the_autograd_scan(group):
    inputs = scan_inputs(group, 7, 4, True, True, torch.float32, readout=bool(group))
    if group:
        fast, slow = hand_checkpointed(True, "none", group), reference_checkpointed(True, "none")
    else:
        fast, slow = hand_scan(True, "none"), reference_scan(True, "none")
    assert_forms_agree(fast, slow, inputs, RTOL[torch.float32])


def causal_mlp(run, bias, mini_batch, approximate, **options):
    def form(q, k, target, eta, w1, w2, ln_w, ln_b, c1=None, c2=None):
        head = ViewsReconstruction(ln_w, ln_b)
        out, final = run(q, k, target, eta, [(w1, c1), (w2, c2)], head, mini_batch, True,
                         gelu_approximate=approximate, **options)
        return out, [p for layer in final for p in layer if p is not None]

    return form


LAYER_CASES = [
    # bias, approximate, mini_batch, n, checkpoint_group: odd lengths leave a partial last mini-batch
    (True, "none", 4, 30, 0),
    (True, "none", 4, 30, 3),
    (False, "tanh", 4, 30, 2),
    (True, "tanh", 5, 63, 4),
    (True, "none", 1, 9, 4),
    (True, "none", 16, 13, 2),
    (True, "none", 4, 30, 100),
]


@pytest.mark.parametrize("bias,approximate,mini_batch,n,group", LAYER_CASES)
def test_causal_dual_matches_the_reference_loop(bias, approximate, mini_batch, n, group):
    """causal_dual runs the hand-written scan (with checkpoint_group, read out inside); the reference takes each
    token's inner gradient by autograd."""
    g = torch.Generator().manual_seed(n + group)
    rand = lambda *shape, scale=1.0: scale * torch.randn(*shape, generator=g, dtype=torch.float64)
    inputs = {"q": rand(BH, n, D), "k": rand(BH, n, D), "target": rand(BH, n, D),
              "eta": 0.3 * torch.rand(BH, n, generator=g, dtype=torch.float64),
              "w1": rand(BH, D, 4 * D, scale=D**-0.5), "w2": rand(BH, 4 * D, D, scale=(4 * D) ** -0.5),
              "ln_w": 1.0 + rand(BH, 1, D, scale=0.1), "ln_b": rand(BH, 1, D, scale=0.1)}
    if bias:
        inputs.update(c1=rand(BH, 1, 4 * D, scale=0.1), c2=rand(BH, 1, D, scale=0.1))
    assert_forms_agree(
        causal_mlp(inner_loop.causal_dual, bias, mini_batch, approximate, checkpoint_group=group),
        causal_mlp(reference.causal_reference, bias, mini_batch, approximate),
        inputs,
        RTOL[torch.float64],
    )


def test_layer_with_checkpoints_gives_the_layer_without():
    torch.manual_seed(0)
    plain = build("ttt-mlp", d_model=16, n_heads=2).double()
    checkpointed = build("ttt-mlp", d_model=16, n_heads=2, checkpoint_group=3).double()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 101, 16, dtype=torch.float64)
    outs = [layer(x) for layer in (plain, checkpointed)]
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=0)
    weight = torch.randn_like(outs[0])
    for out in outs:
        (out * weight).sum().backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        assert p.grad.abs().sum() > 0, name
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-10, atol=1e-14, msg=name)


@pytest.mark.parametrize("overrides", [
    dict(checkpoint_group=4),  # TTT-Linear's scan keeps only W, there are no activations to drop
    dict(learner="mlp", form="primal", checkpoint_group=4),
    dict(learner="mlp", reconstruction="input", ln_residual=False, checkpoint_group=4),
    dict(learner="mlp", causal=False, form="primal", checkpoint_group=4),
])
def test_checkpoint_group_is_refused_where_it_does_nothing(overrides):
    with pytest.raises(ConfigError, match="checkpoint_group=4 needs learner='mlp'"):
        build("ttt-linear", d_model=16, n_heads=2, **overrides)


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_checkpoint_group_must_be_a_non_negative_integer(value):
    with pytest.raises(ConfigError, match="checkpoint_group"):
        build("ttt-mlp", d_model=16, n_heads=2, checkpoint_group=value)


def test_backward_cost_by_hand():
    # B=1, H=1, D=d=4 (h=16), bias on: e1=5, e2=17. Per token: dense 5*16 + 17*4 = 148, backprop 16*4 = 64;
    # per readout pair 5 + 16 + 17 + 4 = 42. N=10, b=4: a scan of 2 mini-batches of 4, then one of 2.
    # Without checkpoints the backward is two products per forward product (the last update's included).
    layer = lambda group: build("ttt-mlp", d_model=4, n_heads=1, mini_batch=4, checkpoint_group=group)
    plain, checkpointed = layer(0).cost(1, 10), layer(2).cost(1, 10)
    assert plain.backward_macs == 2 * plain.forward_macs and plain.final_state_macs == 0
    # group 2 runs each group's scan again (3 * 148 + 64 per token: Z1, Z2, H and both updates, plus the readout's
    # 148), the readout's pairs, and skips each group's last update (148 per token of that mini-batch):
    # 2 * 4 * (3*148 + 64 + 4*42) - 4*148 = 4816, and 1 * 2 * (3*148 + 64 + 2*42) - 2*148 = 888.
    assert checkpointed.forward_macs == plain.forward_macs
    assert checkpointed.backward_macs == plain.backward_macs + 4816 + 888


def test_checkpoints_lower_the_tracked_peak():
    """The point of the knob: at N = 1024 (64 mini-batches) groups of 4 keep a quarter of the peak or less."""
    peaks = {}
    for group in (0, 4):
        torch.manual_seed(0)
        layer = build("ttt-mlp", d_model=32, n_heads=2, checkpoint_group=group)
        x = torch.randn(1, 1024, 32, requires_grad=True)
        peaks[group] = measure_peak_bytes(lambda layer, x: layer(x).sum().backward(), layer, x)
    assert peaks[4] < 0.35 * peaks[0], peaks


def test_the_reference_knobs_turn_a_checkpointed_layer_into_its_reference():
    """`ttt-bench check` builds the reference with the class's reference_knobs over the variant's settings."""
    reference = build("ttt-mlp", d_model=16, n_heads=2, **({"checkpoint_group": 4} | TTTLayer.reference_knobs))
    assert reference.config.form == "primal" and reference.config.checkpoint_group == 0
