"""TTT analytic cost against counts derived by hand for small cases."""

from ttt_bench.layers import build


def test_ttt_linear_dual_cost_by_hand():
    # B=1, H=1, D=d=4, N=8, b=4, bias on (augmented input width 5), learned eta.
    # projections q,k,v,o: 8*4*16 = 512; eta projection: 8*4*1 = 32
    # per token: key path 5*4 + update 5*4 + query path 5*4 = 60 -> 480
    # two mini-batches of 4: scores and score@G, 5 + 4 per (i, j) pair; 32 pairs dense, 20 under the mask
    cost = build("ttt-linear", d_model=4, n_heads=1, mini_batch=4).cost(batch=1, seq_len=8)
    assert cost.forward_macs == 512 + 32 + 480 + 32 * 9
    assert cost.useful_forward_macs == 512 + 32 + 480 + 20 * 9
    assert cost.state_numel == 4 * 4 + 4


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
