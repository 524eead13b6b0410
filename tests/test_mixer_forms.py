"""Attention, linear attention, fast weights and the delta rule: each fast form against its reference
loop on outputs, final state and every gradient, float64 (1e-10) and float32 (1e-4), odd lengths and
chunk sizes that do and do not divide N, fresh random inputs."""

import pytest
import torch
import torch.nn.functional as F
from checks import RTOL, assert_forms_agree, assert_rel_close

from ttt_bench import layer_check
from ttt_bench.layers import build
from ttt_bench.layers.attention import softmax_attention_naive, softmax_attention_sdpa
from ttt_bench.layers.delta_rule import delta_rule_chunked, delta_rule_recurrent
from ttt_bench.layers.fast_weights import fast_weights_chunked, fast_weights_recurrent
from ttt_bench.layers.linear import linear_attention_chunked, linear_attention_recurrent

DTYPES = [torch.float64, torch.float32]
B, H, D = 2, 3, 5
# (N, chunk size): a chunk of one token, chunks that divide N, that do not, and one longer than N.
LENGTHS = [(1, 4), (63, 16), (64, 16), (63, 1), (500, 64), (37, 100)]


def random(seed, n, dtype, value_dim=D, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return {
        "q": scale * torch.randn(B, H, n, D, generator=g, dtype=dtype),
        "k": scale * torch.randn(B, H, n, D, generator=g, dtype=dtype),
        "v": torch.randn(B, H, n, value_dim, generator=g, dtype=dtype),
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n", [2, 63, 200])  # at N = 1 the gradient of q is exactly 0: no relative error
def test_sdpa_matches_naive_attention(dtype, causal, n):
    assert_forms_agree(
        lambda q, k, v: softmax_attention_sdpa(q, k, v, causal),
        lambda q, k, v: softmax_attention_naive(q, k, v, causal),
        random(n, n, dtype),
        RTOL[dtype],
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n,chunk", LENGTHS)
def test_linear_attention_chunked_matches_recurrent(dtype, causal, n, chunk):
    # Value width D + 1: the ones column that carries the 'sum' normaliser.
    inputs = random(7 * n + chunk, n, dtype, value_dim=D + 1, scale=0.5)
    assert_forms_agree(
        lambda q, k, v: linear_attention_chunked(F.elu(q) + 1, F.elu(k) + 1, v, causal, chunk),
        lambda q, k, v: linear_attention_recurrent(F.elu(q) + 1, F.elu(k) + 1, v, causal),
        inputs,
        RTOL[dtype],
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,chunk", LENGTHS)
def test_fast_weights_chunked_matches_recurrent(dtype, n, chunk):
    inputs = random(3 * n + chunk, n, dtype, scale=0.5)
    g = torch.Generator().manual_seed(n)
    inputs["decay"] = 0.5 + 0.49 * torch.rand(H, generator=g, dtype=dtype)  # a learned lambda per head
    assert_forms_agree(
        lambda q, k, v, decay: fast_weights_chunked(q, k, v, decay, 0.5, chunk),
        lambda q, k, v, decay: fast_weights_recurrent(q, k, v, decay, 0.5),
        inputs,
        RTOL[dtype],
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,chunk", LENGTHS)
def test_delta_rule_chunked_matches_recurrent(dtype, n, chunk):
    inputs = random(5 * n + chunk, n, dtype)
    inputs["q"], inputs["k"] = F.normalize(inputs["q"], dim=-1), F.normalize(inputs["k"], dim=-1)
    inputs["beta"] = torch.rand(B, H, n, generator=torch.Generator().manual_seed(n), dtype=dtype)
    assert_forms_agree(
        lambda q, k, v, beta: delta_rule_chunked(q, k, v, beta, chunk),
        lambda q, k, v, beta: delta_rule_recurrent(q, k, v, beta),
        inputs,
        RTOL[dtype],
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,chunk", LENGTHS)
def test_chunked_forms_continue_from_an_initial_state(dtype, n, chunk):
    """A chunk of a sequence after a decoded prefix: each fast form from W_0 against its reference from W_0, the
    gradient of W_0 included (the padding in front of the first chunk must not touch W_0, nor decay it)."""
    inputs = random(11 * n + chunk, n, dtype, scale=0.5)
    g = torch.Generator().manual_seed(n + 1)
    inputs["initial_state"] = torch.randn(B, H, D, D, generator=g, dtype=dtype)
    decay = 0.5 + 0.49 * torch.rand(H, generator=g, dtype=dtype)
    beta = torch.rand(B, H, n, generator=g, dtype=dtype)
    pairs = {
        "linear attention": (
            lambda q, k, v, initial_state: linear_attention_chunked(q, k, v, True, chunk, initial_state),
            lambda q, k, v, initial_state: linear_attention_recurrent(q, k, v, True, initial_state),
        ),
        "fast weights": (
            lambda q, k, v, initial_state: fast_weights_chunked(q, k, v, decay, 0.5, chunk, initial_state),
            lambda q, k, v, initial_state: fast_weights_recurrent(q, k, v, decay, 0.5, initial_state),
        ),
        "delta rule": (
            lambda q, k, v, initial_state: delta_rule_chunked(
                F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, beta, chunk, initial_state),
            lambda q, k, v, initial_state: delta_rule_recurrent(
                F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, beta, initial_state),
        ),
    }
    for fast, reference in pairs.values():
        assert_forms_agree(fast, reference, inputs, RTOL[dtype])


@pytest.mark.parametrize("impl", [softmax_attention_naive, softmax_attention_sdpa])
@pytest.mark.parametrize("n", [1, 5, 63])
def test_causal_attention_of_the_last_queries_continues_a_cache(impl, n):
    """Queries fewer than keys are the last positions: they equal the last rows of the full causal attention."""
    inputs = random(n, 63, torch.float64)
    full = softmax_attention_naive(inputs["q"], inputs["k"], inputs["v"], True)
    last = impl(inputs["q"][..., -n:, :], inputs["k"], inputs["v"], True)
    assert_rel_close(last, full[..., -n:, :], RTOL[torch.float64], f"{impl.__name__}, the last {n} queries")


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("linear-attention-causal", {"chunk_size": 16}),
        ("linear-attention-causal", {"form": "recurrent", "normalizer": "count"}),
        ("linear-attention-identity-causal", {"chunk_size": 7}),
        ("fast-weights-learned-decay", {"chunk_size": 16}),
        ("fast-weights", {"form": "recurrent"}),
        ("delta-rule", {"chunk_size": 16}),
        ("delta-rule", {"form": "recurrent"}),
    ],
)
def test_decoding_from_every_form_and_across_chunks_equals_the_forward(name, overrides):
    """Prefills that end on and off a chunk boundary, then steps, and a prompt prefilled in three pieces."""
    layer = layer_check.small(name, **overrides)
    x = torch.randn(2, 45, layer_check.D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        expected = layer(x)
        for k in (1, 16, 17, 40):
            outputs, _ = layer_check._prefill_then_step(layer, x, k)
            assert_rel_close(torch.cat(outputs, dim=1), expected, RTOL[torch.float64], f"{name}, prefill of {k}")
        state, outputs = None, []
        for piece in x.split([3, 20, 22], dim=1):
            y, state = layer.prefill(piece, state)
            outputs.append(y)
        assert_rel_close(torch.cat(outputs, dim=1), expected, RTOL[torch.float64], f"{name}, three pieces")
        assert state.tokens == 45


def test_fast_weights_reference_reads_like_the_equation():
    """Two tokens by hand: S_1 = eta v_1 k_1^T, S_2 = lambda S_1 + eta v_2 k_2^T, o_t = S_t q_t."""
    q, k, v = (torch.randn(1, 1, 2, 3, dtype=torch.float64) for _ in range(3))
    lam, eta = 0.9, 0.5
    s1 = eta * torch.outer(v[0, 0, 0], k[0, 0, 0])
    s2 = lam * s1 + eta * torch.outer(v[0, 0, 1], k[0, 0, 1])
    out, final = fast_weights_recurrent(q, k, v, torch.tensor([lam], dtype=torch.float64), eta)
    torch.testing.assert_close(out[0, 0], torch.stack([s1 @ q[0, 0, 0], s2 @ q[0, 0, 1]]))
    torch.testing.assert_close(final[0, 0], s2.T)


def test_delta_rule_stores_an_orthonormal_key_exactly():
    """beta = 1 and a unit key overwrite the slot: afterwards S k = v, whatever S held before."""
    k = torch.eye(3, dtype=torch.float64)[None, None, [0, 0]]  # the same key twice
    v = torch.randn(1, 1, 2, 3, dtype=torch.float64)
    out, _ = delta_rule_recurrent(k, k, v, torch.ones(1, 1, 2, dtype=torch.float64))
    torch.testing.assert_close(out[0, 0], v[0, 0])


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("linear-attention", {}),
        ("linear-attention-causal", {"chunk_size": 16}),
        ("linear-attention-identity", {}),
        ("linear-attention-identity-causal", {"chunk_size": 7}),
        ("fast-weights-learned-decay", {"chunk_size": 16}),
        ("delta-rule", {"chunk_size": 16}),
    ],
)
def test_layer_forms_agree(name, overrides):
    """The registered layer's chunked and recurrent forms, outputs and every parameter gradient."""
    torch.manual_seed(0)
    fast = build(name, d_model=12, n_heads=3, form="chunked", **overrides).double()
    slow = build(name, d_model=12, n_heads=3, form="recurrent", **overrides).double()
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 45, 12, dtype=torch.float64)
    outs = [layer(x) for layer in (fast, slow)]
    assert_rel_close(outs[0], outs[1], RTOL[torch.float64], f"{name} output")
    weight = torch.randn_like(outs[0])
    for out in outs:
        (out * weight).sum().backward()
    for (pname, p_fast), p_slow in zip(fast.named_parameters(), slow.parameters()):
        assert_rel_close(p_fast.grad, p_slow.grad, RTOL[torch.float64], f"{name} gradient of {pname}")


def test_linear_attention_normalisers():
    """'sum' divides by phi(q_t) . sum phi(k_s); 'count' by the number of tokens summed."""
    torch.manual_seed(0)
    x = torch.randn(1, 9, 8, dtype=torch.float64)
    for causal in (True, False):
        none = build("linear-attention", d_model=8, n_heads=2, normalizer="none", causal=causal).double()
        summed = build("linear-attention", d_model=8, n_heads=2, normalizer="sum", causal=causal).double()
        counted = build("linear-attention", d_model=8, n_heads=2, normalizer="count", causal=causal).double()
        summed.load_state_dict(none.state_dict())
        counted.load_state_dict(none.state_dict())
        q, k, v = none.qkv(x)
        q, k = F.elu(q) + 1, F.elu(k) + 1
        mask = torch.ones(9, 9, dtype=torch.float64).tril() if causal else torch.ones(9, 9, dtype=torch.float64)
        scores = (q @ k.transpose(-1, -2)) * mask
        expected = {
            "none": scores @ v,
            "sum": (scores @ v) / scores.sum(-1, keepdim=True),
            "count": (scores @ v) / mask.sum(-1)[:, None],
        }
        for label, layer in (("none", none), ("sum", summed), ("count", counted)):
            assert_rel_close(layer(x), layer.merge_heads_and_project(expected[label]), RTOL[torch.float64], label)
