"""Titans' momentum and forgetting gate on the causal mini-batch TTT inner loop (momentum.py): the chunked and the
primal form against the autograd reference loop on outputs, final weights and every gradient; decoding on from a
MomentumState; the equivalences that pin the update down; the analytic MACs against FlopCounterMode."""

import pytest
import torch
from checks import RTOL, assert_forms_agree, assert_rel_close

from ttt_bench.layers.ttt import inner_loop, learners, momentum, reference
from ttt_bench.layers.ttt.momentum import MomentumState
from ttt_bench.layers.ttt.reconstruction import ViewsReconstruction
from ttt_bench.profile.flops import count_with_flop_counter

BH, D_HEAD = 3, 4
FORMS = {"chunked": momentum.causal_chunked, "primal": momentum.causal_primal}


def random_inputs(seed, n, learner, bias, ln, with_momentum, forgetting, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape, scale=1.0: scale * torch.randn(*shape, generator=g, dtype=dtype)
    uniform = lambda low, high: low + (high - low) * torch.rand(BH, n, generator=g, dtype=dtype)
    inputs = {"q": rand(BH, n, D_HEAD), "k": rand(BH, n, D_HEAD), "target": rand(BH, n, D_HEAD),
              "eta": uniform(0.0, 0.3)}
    if with_momentum:
        inputs["momentum"] = uniform(0.0, 0.95)
    if forgetting:
        inputs["retain"] = uniform(0.6, 1.0)
    for i, (d_in, d_out) in enumerate(learners.layer_widths(learner, D_HEAD)):
        inputs[f"w{i}"] = rand(BH, d_in, d_out, scale=d_in**-0.5)
        if bias:
            inputs[f"c{i}"] = rand(BH, 1, d_out, scale=0.1)
    if ln:
        inputs["ln_w"] = 1.0 + rand(BH, 1, D_HEAD, scale=0.1)
        inputs["ln_b"] = rand(BH, 1, D_HEAD, scale=0.1)
    return inputs


def unpack(learner, kw):
    n_layers = len(learners.layer_widths(learner, D_HEAD))
    params = [(kw.pop(f"w{i}"), kw.pop(f"c{i}", None)) for i in range(n_layers)]
    return params, ViewsReconstruction(kw.pop("ln_w", None), kw.pop("ln_b", None))


def flat(final):
    return [p for layer in final for p in layer if p is not None]


def titans_form(run, learner, mini_batch):
    def form(q, k, target, eta, momentum=None, retain=None, **weights):
        params, head = unpack(learner, weights)
        out, final = run(q, k, target, eta, momentum, retain, params, head, mini_batch)
        return out, flat(final)

    return form


CASES = [
    # learner, bias, ln, momentum, forgetting, mini_batch, n
    ("linear", True, True, True, True, 4, 37),
    ("linear", False, False, True, True, 5, 37),
    ("linear", True, True, True, False, 16, 37),
    ("linear", True, True, False, True, 16, 37),
    ("linear", True, False, False, False, 5, 7),
    ("linear", True, True, True, True, 16, 7),
    ("linear", True, True, True, True, 4, 1),
    ("linear", True, True, True, True, 1, 7),
    ("mlp", True, True, True, True, 5, 37),
    ("mlp", False, False, True, False, 4, 7),
    ("mlp", True, True, False, True, 16, 37),
    ("mlp", False, True, False, False, 16, 1),
    ("swiglu", True, True, True, True, 4, 37),
    ("swiglu", False, False, False, True, 5, 37),
    ("swiglu", True, True, True, False, 16, 7),
    ("swiglu", False, True, True, True, 5, 1),
]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("learner,bias,ln,mom,forget,b,n", CASES)
def test_forms_match_reference(form, learner, bias, ln, mom, forget, b, n):
    inputs = random_inputs(n * 31 + b, n, learner, bias, ln, mom, forget)
    assert_forms_agree(titans_form(FORMS[form], learner, b),
                       titans_form(reference.momentum_reference, learner, b), inputs, RTOL[torch.float64])


@pytest.mark.parametrize("form", FORMS)
def test_float32_matches_reference(form):
    inputs = random_inputs(5, 37, "mlp", True, True, True, True, dtype=torch.float32)
    assert_forms_agree(titans_form(FORMS[form], "mlp", 5),
                       titans_form(reference.momentum_reference, "mlp", 5), inputs, RTOL[torch.float32])


@pytest.mark.parametrize("form", FORMS)
def test_exact_zeros_in_the_gates(form):
    """mu_t = 0 (the momentum restarts) and r_t = 0 (W_t = S_t, everything before forgotten) at some tokens: the
    decay products are cumprods, not exp of log-sums, so they stay exact and so do their gradients."""
    inputs = random_inputs(3, 23, "linear", True, True, True, True)
    inputs["momentum"][:, [0, 4, 9, 10]] = 0.0
    inputs["retain"][:, [3, 9, 17]] = 0.0
    assert_forms_agree(titans_form(FORMS[form], "linear", 5),
                       titans_form(reference.momentum_reference, "linear", 5), inputs, RTOL[torch.float64])


def split_form(first, second, learner, mini_batch, split):
    """A prefix of `split` tokens by `first` from MomentumState.start, then the rest by `second` from its state."""

    def form(q, k, target, eta, momentum=None, retain=None, **weights):
        params, head = unpack(learner, weights)
        state = MomentumState.start(*learners.augment(params), momentum=momentum is not None)
        outputs = []
        for run, start, end in ((first, 0, split), (second, split, q.shape[1])):
            part = lambda x, start=start, end=end: None if x is None else x[:, start:end]
            out, state = run(*(part(x) for x in (q, k, target, eta, momentum, retain)), state, head, mini_batch)
            outputs.append(out)
            assert state.position == end % mini_batch
        return torch.cat(outputs, dim=1), flat(learners.unaugment(state.weights, state.learner))

    return form


@pytest.mark.parametrize("first,second", [("chunked", "chunked"), ("primal", "primal"), ("primal", "chunked"),
                                          ("chunked", "primal")])
@pytest.mark.parametrize("split", [7, 10, 3])  # mid-mini-batch, on a boundary, inside the first mini-batch
@pytest.mark.parametrize("learner,mom,forget", [("linear", True, True), ("mlp", True, False),
                                                ("swiglu", False, True)])
def test_continuing_from_a_state_equals_one_run(first, second, split, learner, mom, forget):
    b, n = 5, 23
    inputs = random_inputs(split, n, learner, True, True, mom, forget)
    assert_forms_agree(split_form(FORMS[first], FORMS[second], learner, b, split),
                       titans_form(momentum.causal_chunked, learner, b), inputs, RTOL[torch.float64])


def test_states_of_both_forms_agree():
    """After the same prefix (mid-mini-batch) the chunked and the primal form hold the same anchor, W, S, position."""
    inputs = random_inputs(0, 13, "mlp", True, True, True, True)
    params, head = unpack("mlp", inputs)
    states = []
    for run in FORMS.values():
        state = MomentumState.start(*learners.augment(params), momentum=True)
        states.append(run(*(inputs[key] for key in ("q", "k", "target", "eta", "momentum", "retain")), state, head,
                          5)[1])
    chunked, primal = states
    assert chunked.position == primal.position == 3
    for name in ("anchor", "weights", "velocity"):
        for a, b in zip(getattr(chunked, name), getattr(primal, name)):
            assert_rel_close(a, b, RTOL[torch.float64], name)


def test_a_state_with_velocity_needs_momentum():
    inputs = random_inputs(0, 4, "linear", True, True, False, False)
    params, head = unpack("linear", inputs)
    state = MomentumState.start(*learners.augment(params), momentum=True)
    with pytest.raises(ValueError, match="velocity"):
        momentum.causal_chunked(inputs["q"], inputs["k"], inputs["target"], inputs["eta"], None, None, state, head, 4)


def ttt_form(run, learner, mini_batch, gates):
    """inner_loop's TTT (token_index_scale=False) or a Titans form with fixed gates (`gates`(n) -> mu, r)."""

    def form(q, k, target, eta, **weights):
        params, head = unpack(learner, weights)
        if gates is None:
            out, final = run(q, k, target, eta, params, head, mini_batch, False)
        else:
            out, final = run(q, k, target, eta, *gates(q), params, head, mini_batch)
        return out, flat(final)

    return form


NO_GATES = lambda q: (None, None)
NEUTRAL_GATES = lambda q: (q.new_zeros(q.shape[:2]), q.new_ones(q.shape[:2]))


@pytest.mark.parametrize("gates", [NO_GATES, NEUTRAL_GATES], ids=["none", "zero-momentum-full-retention"])
@pytest.mark.parametrize("ttt", ["dual", "primal"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("learner,b,n", [("linear", 16, 37), ("mlp", 5, 37), ("swiglu", 4, 7)])
def test_without_momentum_and_forgetting_is_ttt(gates, ttt, form, learner, b, n):
    """(a) momentum=None, retain=None and (b) mu = 0, r = 1 are today's TTT step (token_index_scale=False):
    W_t = W^s - sum_{j<=t} theta_j grad l_j(W^s) within a mini-batch."""
    inputs = random_inputs(n + b, n, learner, True, True, False, False)
    run = inner_loop.causal_dual if ttt == "dual" else inner_loop.causal_primal
    assert_forms_agree(ttt_form(FORMS[form], learner, b, gates), ttt_form(run, learner, b, None), inputs,
                       RTOL[torch.float64])


@pytest.mark.parametrize("mom", [False, True])
@pytest.mark.parametrize("form", FORMS)
def test_zero_rates_give_pure_decay(form, mom):
    """(c) eta = 0: no gradient, S stays 0, W_t = W0 prod_{u<=t} r_u, and token t reads those decayed weights."""
    n, b = 11, 4
    inputs = random_inputs(1, n, "mlp", True, True, mom, True)
    inputs["eta"] = torch.zeros_like(inputs["eta"])
    retain = inputs["retain"]
    params, head = unpack("mlp", dict(inputs))
    out, final = FORMS[form](inputs["q"], inputs["k"], inputs["target"], inputs["eta"], inputs.get("momentum"),
                             retain, params, head, b)
    kept = retain.cumprod(1)
    decayed = lambda t: [(w * kept[:, t, None, None], c * kept[:, t, None, None]) for w, c in params]
    for (w, c), (w_end, c_end) in zip(decayed(n - 1), final):
        assert_rel_close(w_end, w, RTOL[torch.float64], "decayed W")
        assert_rel_close(c_end, c, RTOL[torch.float64], "decayed bias")
    q = inputs["q"]
    expected = torch.cat([head.readout(learners.apply(decayed(t), q[:, t : t + 1]), q[:, t : t + 1])
                          for t in range(n)], dim=1)
    assert_rel_close(out, expected, RTOL[torch.float64], "output")
    assert (kept[:, -1] < 0.5).all(), "the decay must be visible"


@pytest.mark.parametrize("form", FORMS)
def test_mini_batch_one_is_titans_per_token_rule(form):
    """(d) b = 1, a linear memory without bias and the plain MSE head: Titans' recurrence token by token, with the
    gradient at W_{t-1}: S_t = mu_t S_{t-1} - theta_t k_t^T (k_t W_{t-1} - v_t), W_t = r_t W_{t-1} + S_t,
    output_t = q_t W_t."""
    n = 19
    inputs = random_inputs(2, n, "linear", False, False, True, True)
    q, k, v, theta, mu, r, w = (inputs[key] for key in ("q", "k", "target", "eta", "momentum", "retain", "w0"))
    out, final = FORMS[form](q, k, v, theta, mu, r, [(w, None)], ViewsReconstruction(None, None), 1)
    s, outputs = torch.zeros_like(w), []
    for t in range(n):
        k_t, q_t = k[:, t : t + 1], q[:, t : t + 1]
        surprise = k_t.transpose(-1, -2) @ (k_t @ w - v[:, t : t + 1])
        s = mu[:, t, None, None] * s - theta[:, t, None, None] * surprise
        w = r[:, t, None, None] * w + s
        outputs.append(q_t @ w)
    assert_rel_close(out, torch.cat(outputs, dim=1), RTOL[torch.float64], "output")
    assert_rel_close(final[0][0], w, RTOL[torch.float64], "final W")


@pytest.mark.parametrize("form", FORMS)
def test_momentum_carries_across_mini_batches(form):
    """With momentum, the second mini-batch moves even where its own rates are zero: S from the first carries on
    (W_t = W_{t-1} + mu^i S_b); without momentum it stays at W_b."""
    n, b = 8, 4
    inputs = random_inputs(4, n, "linear", True, True, True, False)
    inputs["eta"][:, b:] = 0.0
    inputs["momentum"] = torch.full_like(inputs["momentum"], 0.5)
    params, head = unpack("linear", dict(inputs))
    args = (inputs["q"], inputs["k"], inputs["target"], inputs["eta"])
    _, carried = FORMS[form](*args, inputs["momentum"], None, params, head, b)
    _, first_only = FORMS[form](*(x[:, :b] for x in args), inputs["momentum"][:, :b], None,
                                MomentumState.start(*learners.augment(params), momentum=True), head, b)
    w_b, s_b = first_only.weights[0], first_only.velocity[0]
    expected = w_b + sum(0.5**i for i in range(1, b + 1)) * s_b
    assert_rel_close(learners.augment(carried)[0][0], expected, RTOL[torch.float64], "W after the idle mini-batch")
    assert s_b.abs().max() > 1e-3
    _, still = FORMS[form](*args, None, None, params, head, b)
    _, first = FORMS[form](*(x[:, :b] for x in args), None, None, params, head, b)
    for a, c in zip(flat(still), flat(first)):
        assert_rel_close(a, c, RTOL[torch.float64], "W without momentum")


def analytic_widths(learner, bias):
    widths = learners.layer_widths(learner, D_HEAD)
    return [(d_in + int(bias), d_out) for d_in, d_out in widths], widths[1:]


@pytest.mark.parametrize("mom,forget", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("learner,bias", [("linear", True), ("mlp", False), ("swiglu", True)])
@pytest.mark.parametrize("n,b", [(1, 5), (7, 16), (37, 5), (40, 5)])
def test_analytic_macs_equal_flop_counter(n, b, learner, bias, mom, forget):
    """Forward as executed, forward + backward of a loss on the output with every input requiring a gradient (the
    last piece's state update runs no backward), and the primal form's forward; every other operator is elementwise
    by op_policy (cumprod among them)."""
    inputs = {key: x.requires_grad_() for key, x in random_inputs(n, n, learner, bias, True, mom, forget).items()}
    params, head = unpack(learner, dict(inputs))
    args = (inputs["q"], inputs["k"], inputs["target"], inputs["eta"], inputs.get("momentum"), inputs.get("retain"),
            params, head, b)
    chunked = lambda: momentum.causal_chunked(*args)[0]
    counts = {
        "forward": count_with_flop_counter(chunked),
        "forward+backward": count_with_flop_counter(lambda: chunked().sum().backward()),
        "primal": count_with_flop_counter(lambda: momentum.causal_primal(*args)),
    }
    widths, backprop = analytic_widths(learner, bias)
    cost = momentum.chunked_macs(n, b, widths, backprop, mom, forget)
    expected = {"forward": cost.forward_macs, "forward+backward": cost.forward_macs + cost.backward_macs,
                "primal": momentum.primal_macs(n, widths, backprop)}
    for name, count in counts.items():
        assert count.macs == BH * expected[name], name
        assert not count.uncounted_ops, count.uncounted_ops
    last = n % b or min(n, b)
    assert cost.final_state_macs == last * sum(a * e for a, e in widths) * (1 + int(mom))
