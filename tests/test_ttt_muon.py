"""LaCT's large-chunk update (muon.py) against its reference loop (reference.muon_reference): outputs, final weights
and every gradient in float64 (1e-10) and float32, odd lengths and chunks that do not divide N; its degenerate cases
as theorems; and Newton-Schulz's own properties."""

import pytest
import torch
from checks import RTOL, assert_forms_agree, assert_rel_close

from ttt_bench.errors import ConfigError
from ttt_bench.layers import build
from ttt_bench.layers.ttt import inner_loop, learners, muon, reference
from ttt_bench.layers.ttt.reconstruction import ViewsReconstruction

BH, D_HEAD = 3, 6
# Newton-Schulz's quintic has slope 3.4 at 0 and five steps of it amplify float32 rounding between two summation
# orders (a chunk at once, token by token, autograd's) to a few 1e-4; float64 keeps the 1e-10 bar.
RTOL_LACT = {**RTOL, torch.float32: 2e-3}


def random_inputs(seed, n, learner, dtype, ln=True):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape, scale=1.0: scale * torch.randn(*shape, generator=g, dtype=dtype)
    inputs = {"q": rand(BH, n, D_HEAD), "k": rand(BH, n, D_HEAD), "target": rand(BH, n, D_HEAD),
              "eta": 0.3 * torch.rand(BH, n, generator=g, dtype=dtype)}
    for i, (d_in, d_out) in enumerate(learners.layer_widths(learner, D_HEAD)):
        inputs[f"w{i}"] = rand(BH, d_in, d_out, scale=d_in**-0.5)
    if ln:
        inputs["ln_w"] = 1.0 + rand(BH, 1, D_HEAD, scale=0.1)
        inputs["ln_b"] = rand(BH, 1, D_HEAD, scale=0.1)
    return inputs


def lact_form(run, mini_batch, ns_steps, weight_norm):
    def form(q, k, target, eta, ln_w=None, ln_b=None, **weights):
        params = [(weights[f"w{i}"], None) for i in range(len(weights))]
        out, final = run(q, k, target, eta, params, ViewsReconstruction(ln_w, ln_b), mini_batch, ns_steps, weight_norm)
        return out, [w for w, _ in final]

    return form


CASES = [
    # learner, ln, mini_batch, n, ns_steps, weight_norm
    ("swiglu", True, 16, 37, 5, True),
    ("swiglu", False, 16, 37, 5, False),  # unnormalised weights grow by an orthogonal matrix per chunk: few chunks
    ("swiglu", True, 4, 7, 1, True),
    ("mlp", True, 7, 37, 5, True),
    ("linear", True, 5, 23, 5, False),
    ("linear", False, 1, 9, 0, False),
    ("swiglu", True, 64, 37, 5, True),  # one partial chunk: every token reads W0
    ("swiglu", True, 4, 1, 5, True),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("run", [muon.causal_chunked, muon.causal_primal], ids=["chunked", "primal"])
@pytest.mark.parametrize("learner,ln,b,n,ns_steps,weight_norm", CASES)
def test_lact_forms_match_reference(dtype, run, learner, ln, b, n, ns_steps, weight_norm):
    inputs = random_inputs(seed=n * 13 + b, n=n, learner=learner, dtype=dtype, ln=ln)
    assert_forms_agree(lact_form(run, b, ns_steps, weight_norm),
                       lact_form(reference.muon_reference, b, ns_steps, weight_norm), inputs, RTOL_LACT[dtype])


@pytest.mark.parametrize("split", [3, 8, 10, 16])  # mid-chunk, on a chunk's end, just after one, on a later end
@pytest.mark.parametrize("first,second", [(muon.causal_chunked, muon.causal_chunked),
                                          (muon.causal_primal, muon.causal_chunked),
                                          (muon.causal_chunked, muon.causal_primal)])
def test_a_run_continued_from_its_pending_chunk_equals_one_run(split, first, second):
    kw = random_inputs(seed=split, n=21, learner="swiglu", dtype=torch.float64)
    head = ViewsReconstruction(kw.pop("ln_w"), kw.pop("ln_b"))
    params = [(kw.pop("w0"), None), (kw.pop("w1"), None)]
    views = [kw[name] for name in ("q", "k", "target", "eta")]
    whole, final = muon.causal_chunked(*views, params, head, 8, 5, True)
    weights, learner = learners.augment(params)
    norms = muon.column_norms(weights)
    out1, state = first(*(v[:, :split] for v in views), inner_loop.Pending.start(weights, learner), head, 8, 5, True,
                        norms=norms)
    out2, state = second(*(v[:, split:] for v in views), state, head, 8, 5, True, norms=norms)
    assert_rel_close(torch.cat([out1, out2], dim=1), whole, 1e-12, "outputs")
    assert state.position == 21 % 8
    for mine, theirs in zip(state.weights, final):  # 21 = 2 chunks + 5 pending tokens: the start of the third
        assert_rel_close(mine, theirs[0], 1e-12, "the pending chunk's start weights")


def test_theorem_one_token_chunks_without_orthogonalisation_are_ttt_linear_read_one_token_late():
    """ns_steps = 0, no weight norm, b = 1, a linear learner: the weights after token t are TTT-Linear's (b = 1) W_t,
    and LaCT's token t reads W_{t-1}, so LaCT on queries shifted one token later gives TTT-Linear's outputs."""
    n = 19
    kw = random_inputs(seed=5, n=n + 1, learner="linear", dtype=torch.float64)
    head = ViewsReconstruction(kw["ln_w"], kw["ln_b"])
    params = [(kw["w0"], None)]
    q, k, target, eta = kw["q"], kw["k"], kw["target"], kw["eta"]
    ttt_out, ttt_final = inner_loop.causal_dual(q[:, :n], k[:, :n], target[:, :n], eta[:, :n], params, head, 1, False)
    shifted_q = torch.cat([q[:, :1], q[:, :n]], dim=1)  # LaCT's token t + 1 reads W_t: give it TTT's q_t
    lact_out, _ = muon.causal_chunked(shifted_q, k, target, eta, params, head, 1, 0, False)
    assert_rel_close(lact_out[:, 1:], ttt_out, 1e-12, "LaCT one token late against TTT-Linear")
    _, lact_final = muon.causal_chunked(q[:, :n], k[:, :n], target[:, :n], eta[:, :n], params, head, 1, 0, False)
    assert_rel_close(lact_final[0][0], ttt_final[0][0], 1e-12, "the final weights")


def test_theorem_a_chunk_longer_than_the_sequence_reads_only_w0():
    """Nothing a chunk learns reaches its own tokens: with N <= b every output is the readout at W0."""
    kw = random_inputs(seed=9, n=12, learner="swiglu", dtype=torch.float64)
    head = ViewsReconstruction(kw["ln_w"], kw["ln_b"])
    params = [(kw["w0"], None), (kw["w1"], None)]
    out, final = muon.causal_chunked(kw["q"], kw["k"], kw["target"], kw["eta"], params, head, 12, 5, True)
    assert_rel_close(out, head.readout(learners.apply(params, kw["q"]), kw["q"]), 1e-13, "outputs at W0")
    assert not torch.equal(final[0][0], params[0][0])  # the complete chunk did update the weights


def test_newton_schulz_pushes_singular_values_towards_one_and_keeps_singular_vectors():
    g = torch.Generator().manual_seed(0)
    grad = torch.randn(4, 6, 12, generator=g, dtype=torch.float64) @ torch.diag(torch.logspace(-2, 1, 12,
                                                                                               dtype=torch.float64))
    ortho = muon.newton_schulz(grad, 5)
    singular = torch.linalg.svdvals(ortho)
    # Muon's quintic trades exactness for speed: after 5 steps the singular values lie around 1, not at it.
    assert singular.min() > 0.5 and singular.max() < 1.3, singular
    assert torch.linalg.svdvals(grad).max() / torch.linalg.svdvals(grad).min() > 20
    # Orthogonal rotations on either side commute with the iteration (it is a matrix polynomial in G G^T times G).
    u = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))[0]
    assert_rel_close(muon.newton_schulz(u @ grad @ v, 5), u @ ortho @ v, 1e-12, "rotated")
    tall = grad.mT.contiguous()
    assert_rel_close(muon.newton_schulz(tall, 5), ortho.mT, 1e-13, "a tall matrix runs on its wide side")
    assert torch.equal(muon.newton_schulz(grad, 0), grad)


def test_newton_schulz_macs_count_the_iteration():
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 6, 10)
    with FlopCounterMode(display=False) as counter:
        muon.newton_schulz(x.mT, 3)
    assert counter.get_total_flops() == 2 * 2 * muon.newton_schulz_macs(10, 6, 3)


def test_weight_norm_keeps_every_output_units_norm():
    kw = random_inputs(seed=3, n=40, learner="swiglu", dtype=torch.float64)
    params = [(kw["w0"], None), (kw["w1"], None)]
    _, final = muon.causal_chunked(kw["q"], kw["k"], kw["target"], kw["eta"], params,
                                   ViewsReconstruction(kw["ln_w"], kw["ln_b"]), 8, 5, True)
    for (w, _), (w0, _) in zip(final, params):
        assert not torch.allclose(w, w0)
        assert_rel_close(w.norm(dim=-2), w0.norm(dim=-2), 1e-4, "column norms (up to the 1e-5 epsilon)")


@pytest.mark.parametrize("knobs, named", [
    (dict(inner_bias=True), "inner_bias=False"),
    (dict(forget_gate=True), "forget_gate=False"),
    (dict(token_index_scale=True), "token_index_scale=False"),
    (dict(inner_optimizer="gd", newton_schulz_steps=3), "inner_optimizer='muon'"),
    (dict(newton_schulz_steps=-1), "newton_schulz_steps"),
    (dict(causal=False, form="primal"), "causal=True"),
])
def test_lact_knobs_that_do_not_combine_are_refused(knobs, named):
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace("[", r"\[")):
        build("lact-swiglu", **knobs)
