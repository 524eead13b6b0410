"""Each family's analytic cost (MACs; FLOPs = 2 x MACs) against counts derived by hand for small cases, and each
layer's declared memory order against its measured peaks."""

import math

import pytest

from ttt_bench import layers
from ttt_bench.layers import build
from ttt_bench.layers.base import LayerCost
from ttt_bench.profile.measure import Cell, Workload
from ttt_bench.profile.memory import measure_peak_bytes


def test_ttt_linear_dual_cost_by_hand():
    # B=1, H=1, D=d=4, N=8, b=4, bias on (augmented input width 5), learned eta.
    # projections q,k,v,o: 8*4*16 = 512; eta projection: 8*4*1 = 32
    # per token: key path 5*4 + update 5*4 + query path 5*4 = 60 -> 480
    # two mini-batches of 4: scores and score@G, 5 + 4 per (i, j) pair; 32 pairs dense, 20 under the mask
    cost = build("ttt-linear", d_model=4, n_heads=1, mini_batch=4).cost(batch=1, seq_len=8)
    assert cost.forward_macs == 512 + 32 + 480 + 32 * 9
    assert cost.useful_forward_macs == 512 + 32 + 480 + 20 * 9
    assert cost.state_numel == 4 * 4 + 4
    # Backward: two products per product, plus Z = K W recomputed per token for LayerNorm (5*4 each).
    assert cost.backward_macs == 2 * cost.forward_macs + 8 * 20


def test_ttt_linear_dual_cost_with_a_short_last_mini_batch():
    # N=10, b=4: mini-batches of 4, 4, 2 -> 16 + 16 + 4 = 36 pairs dense, 10 + 10 + 3 = 23 useful
    cost = build("ttt-linear", d_model=4, n_heads=1, mini_batch=4).cost(batch=1, seq_len=10)
    base = 10 * 4 * 16 + 10 * 4 + 10 * 60
    assert cost.forward_macs == base + 36 * 9
    assert cost.useful_forward_macs == base + 23 * 9


def test_mttt_mlp_cost_by_hand():
    # B=1, H=2, D=8, d=4, N=5, one step, no eta projection, input reconstruction (no v projection).
    # projections q,k,o: 5*8*24 = 960
    # per head-token: key path (5*16 + 17*4) = 148, backprop 16*4 = 64, decoder 2*4*8 = 64,
    #   update 148 -> 424 train + 148 readout = 572; 2 heads * 5 tokens = 10 -> 5720
    cost = build("mttt-mlp", d_model=8, n_heads=2).cost(batch=1, seq_len=5)
    assert cost.forward_macs == cost.useful_forward_macs == 960 + 5720
    assert cost.state_numel == 2 * (4 * 16 + 16 + 16 * 4 + 4)


def test_softmax_attention_cost_by_hand():
    # B=1, H=2, D=8, d=4, N=5. Projections q,k,v,o: 5*8*32 = 1280.
    # Q K^T and P V: 2 * (2 heads * 25 pairs * 4) = 400 dense; causal keeps 15 of 25 pairs -> 240.
    for impl in ("naive", "sdpa"):
        full = build(f"attention-{impl}", d_model=8, n_heads=2).cost(batch=1, seq_len=5)
        causal = build(f"attention-{impl}-causal", d_model=8, n_heads=2).cost(batch=1, seq_len=5)
        assert full.forward_macs == full.useful_forward_macs == 1280 + 400
        assert causal.forward_macs == 1280 + 400 and causal.useful_forward_macs == 1280 + 240
        assert full.state_numel is None
        assert full.forward_flops == 2 * (1280 + 400)
        # Backward: the projections' two products each; of the N x N x d products (2*25*4 = 200 MACs each),
        # naive autograd runs four, SDPA's fused backward five (the scores recomputed).
        assert full.backward_macs == causal.backward_macs == 2 * 1280 + (4 if impl == "naive" else 5) * 200


def test_linear_attention_cost_by_hand():
    # B=1, H=1, D=d=4, N=10, 'sum' normaliser: value width e = 5. Projections: 10*4*16 = 640.
    # Non-causal: K^T V and Q S, 10*4*5 each -> 400.
    full = build("linear-attention", d_model=4, n_heads=1).cost(batch=1, seq_len=10)
    assert full.forward_macs == full.useful_forward_macs == 640 + 400
    assert full.state_numel == 4 * 5
    # Causal, C=4: three chunks (padded to 12): state write and read 12*40 = 480, intra-chunk
    # Q K^T and scores V over 3 dense 4x4 blocks, 48 * (4 + 5) = 432; useful pairs 10 + 10 + 3 = 23.
    causal = build("linear-attention-causal", d_model=4, n_heads=1, chunk_size=4).cost(batch=1, seq_len=10)
    assert causal.forward_macs == 640 + 480 + 432
    assert causal.useful_forward_macs == 640 + 400 + 23 * 9
    recurrent = build("linear-attention-causal", d_model=4, n_heads=1, form="recurrent").cost(batch=1, seq_len=10)
    assert recurrent.forward_macs == recurrent.useful_forward_macs == 640 + 400


def test_fast_weights_cost_by_hand():
    # Like causal linear attention with e = d = 4: N=8, C=4 -> two chunks, 8*32 + 32*8 executed,
    # 8*32 + 20*8 useful; the decay is elementwise and not counted.
    cost = build("fast-weights", d_model=4, n_heads=1, chunk_size=4).cost(batch=1, seq_len=8)
    assert cost.forward_macs == 512 + 256 + 256
    assert cost.useful_forward_macs == 512 + 256 + 160
    assert cost.state_numel == 16


def test_delta_rule_cost_by_hand():
    # B=1, H=1, D=d=e=4, N=8, C=4. Projections 512 + beta 8*4*1 = 32.
    # Per chunk: W_k S, K^T U, Q S (4*16 each = 192), Gram and Q K^T (16*4 each), scores U (16*4),
    # the unit-triangular solve (6 strict pairs * 8 columns = 48): 432; two chunks 864.
    # Useful: 8*48 + 20 pairs (s <= t) * 8 + 12 strict pairs * 12 = 384 + 160 + 144 = 688.
    cost = build("delta-rule", d_model=4, n_heads=1, chunk_size=4).cost(batch=1, seq_len=8)
    assert cost.forward_macs == 544 + 864
    assert cost.useful_forward_macs == 544 + 688
    # Backward: no products for the last chunk's K^T U (16*4 = 64, only the final state reads it);
    # each chunk's solve backward adds dA = -dB X^T (16 per column) minus one solve (6 per column),
    # 10 * 8 columns = 80 per chunk; the first chunk's W_k S reads the zero state (one product, -64).
    assert cost.final_state_macs == 64
    assert cost.backward_macs == 2 * (544 + 864 - 64) + 2 * 80 - 64
    recurrent = build("delta-rule", d_model=4, n_heads=1, form="recurrent").cost(batch=1, seq_len=8)
    assert recurrent.forward_macs == recurrent.useful_forward_macs == 544 + 384
    assert cost.state_numel == 16


@pytest.mark.parametrize("name", layers.names())
def test_peak_memory_grows_with_the_declared_order(name):
    """Doubling N multiplies the tracked peak by about 2^k, k = LayerCost.memory_order: 4 where the layer
    materialises N x N scores, 2 where it does not (fixed overheads pull a ratio down a little, never to half
    a power of two). A wrong declaration fails here: the memory fit extrapolates with it."""
    order = build(name, d_model=16, n_heads=2).cost(1, 256).memory_order
    for pass_name in ("fwd_bwd", "fwd"):
        peaks = []
        for seq_len in (256, 512):
            work = Workload.build(Cell(name, seq_len, d_model=16, n_heads=2))
            peaks.append(measure_peak_bytes(work.calls[pass_name]))
        measured = math.log2(peaks[1] / peaks[0])
        assert abs(measured - order) < 0.5, f"{name} {pass_name}: peak ~ N^{measured:.2f}, declared N^{order}"


def test_a_memory_order_other_than_one_or_two_is_refused():
    with pytest.raises(ValueError, match="memory_order=3 is not allowed"):
        LayerCost(1, 1, 1, 2, None, memory_order=3)
