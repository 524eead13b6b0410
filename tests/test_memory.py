"""LiveBytesTracker counts op-allocated storages exactly: each once, until freed, backward included; and the
memory fit (ttt_bench.profile.memory_fit) predicts from such peaks only what they support."""

import gc
import math
import subprocess
import sys
import textwrap

import pytest
import torch

from ttt_bench.profile.memory import LiveBytesTracker, measure_peak_bytes
from ttt_bench.profile.memory_fit import FIT_TOLERANCE, MemoryFit, fit_memory, points_needed

FLOAT32_BYTES = 4


def qkv(batch=2, heads=3, seq_len=64, head_dim=16):
    """q, k, v: [B, H, N, d], float32, no gradient."""
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(batch, heads, seq_len, head_dim, generator=generator) for _ in range(3))


def dispatch_modes_active() -> int:
    return torch._C._len_torch_dispatch_stack()


def test_score_matrix_alone_is_exactly_b_h_n_n_elements():
    q, k, _ = qkv()
    batch, heads, seq_len, _ = q.shape
    expected = batch * heads * seq_len * seq_len * q.element_size()

    assert measure_peak_bytes(lambda: q @ k.transpose(-1, -2)) == expected


def test_naive_attention_composite_step_by_step():
    q, k, v = qkv()
    batch, heads, seq_len, head_dim = q.shape
    scores_bytes = batch * heads * seq_len * seq_len * FLOAT32_BYTES
    out_bytes = batch * heads * seq_len * head_dim * FLOAT32_BYTES

    with LiveBytesTracker() as tracker:
        scores = q @ k.transpose(-1, -2)
        assert tracker.live_bytes == scores_bytes
        probs = scores.softmax(dim=-1)
        assert tracker.live_bytes == 2 * scores_bytes
        del scores
        assert tracker.live_bytes == scores_bytes
        out = probs @ v
        assert tracker.live_bytes == scores_bytes + out_bytes
        del probs
        assert tracker.live_bytes == out_bytes

    assert tracker.peak_bytes == 2 * scores_bytes
    assert out.shape == (batch, heads, seq_len, head_dim)


def test_views_are_counted_once_and_views_of_inputs_not_at_all():
    x = torch.randn(32, 8)
    x_bytes = x.numel() * x.element_size()

    def views_of_input():
        return x.view(8, 32), x[1:], x.t(), x.unsqueeze(0).expand(3, 32, 8)

    def views_of_new_tensor():
        y = x * 2
        return y, y.view(8, 32), y[1:], y.t(), y.transpose(0, 1)[::2]

    assert measure_peak_bytes(views_of_input) == 0
    assert measure_peak_bytes(views_of_new_tensor) == x_bytes


def test_in_place_ops_on_inputs_and_parameters_are_not_counted():
    x = torch.randn(16, 8)
    layer = torch.nn.Linear(8, 8, bias=False)

    def in_place():
        x.mul_(2)
        with torch.no_grad():
            layer.weight.add_(1)

    assert measure_peak_bytes(in_place) == 0


def test_backward_ops_are_seen():
    seq_len, width = 64, 16
    x = torch.randn(seq_len, width, requires_grad=True)
    w = torch.randn(width, width, requires_grad=True)
    activation_bytes = seq_len * width * FLOAT32_BYTES

    def forward():
        torch.tanh(x @ w).sum()

    def forward_backward():
        torch.tanh(x @ w).sum().backward()

    # Forward: the product and tanh of it, both live for a moment.
    assert measure_peak_bytes(forward) == 2 * activation_bytes
    # Backward: tanh's gradient and x's gradient [N, d] live together with w's gradient [d, d],
    # plus the scalar loss and its seed gradient.
    peak_fwd_bwd = measure_peak_bytes(forward_backward)
    assert peak_fwd_bwd == 2 * activation_bytes + width * width * FLOAT32_BYTES + 2 * FLOAT32_BYTES
    assert x.grad is not None and w.grad is not None


def test_runs_are_deterministic():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))
    x = torch.randn(4, 128, 32, requires_grad=True)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        x.grad = None
        model(x).softmax(-1).sum().backward()

    peaks = [measure_peak_bytes(forward_backward) for _ in range(3)]
    assert peaks[0] > 0
    assert peaks == [peaks[0]] * 3


def test_first_measurement_in_a_fresh_process_equals_the_next():
    # The first op under a dispatch mode imports torch._dynamo; met mid-measurement, the import's
    # reference cycles kept a finished frame (and its tensor `product`) alive. Needs a fresh process.
    script = textwrap.dedent(
        """
        import torch
        from ttt_bench.profile.memory import measure_peak_bytes
        x = torch.randn(256, 64, requires_grad=True)
        w = torch.randn(64, 64, requires_grad=True)
        def forward():
            product = x @ w
            return torch.tanh(product) @ w
        def forward_backward():
            x.grad, w.grad = None, None
            forward().square().sum().backward()
        print(measure_peak_bytes(forward_backward), measure_peak_bytes(forward_backward))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    first, second = map(int, result.stdout.split())
    assert first == second


def test_budget_raises_out_of_memory_and_leaves_no_state():
    seq_len, width = 64, 16
    x = torch.randn(seq_len, width, requires_grad=True)
    w = torch.randn(width, width, requires_grad=True)

    def forward_backward():
        x.grad, w.grad = None, None
        torch.tanh(x @ w).sum().backward()

    unlimited = measure_peak_bytes(forward_backward)
    modes_before = dispatch_modes_active()

    # A budget just below the forward peak fails in forward, one below the backward peak in backward.
    for budget_bytes in (2 * seq_len * width * FLOAT32_BYTES - 1, unlimited - 1):
        with pytest.raises(torch.OutOfMemoryError, match="exceed the budget"):
            measure_peak_bytes(forward_backward, budget_bytes=budget_bytes)
        assert dispatch_modes_active() == modes_before
        assert gc.isenabled()

    assert measure_peak_bytes(forward_backward, budget_bytes=unlimited) == unlimited
    assert measure_peak_bytes(forward_backward) == unlimited


def test_tracker_drops_its_references_on_exit():
    x = torch.randn(16, 16)
    with LiveBytesTracker() as tracker:
        y = x + 1
        z = y * 2
    live_at_exit = tracker.live_bytes
    assert live_at_exit == 2 * y.numel() * FLOAT32_BYTES
    assert not tracker._tracked and not tracker._foreign
    del y, z
    assert tracker.live_bytes == live_at_exit


def test_memory_of_a_linear_chain_is_linear_in_length():
    width = 16
    w = torch.randn(width, width)

    def peak_for(seq_len: int) -> int:
        x = torch.randn(seq_len, width, requires_grad=True)

        def chain():
            h = torch.relu(x @ w)
            h = torch.tanh(h * 0.5 + 1) @ w.t()
            h.square().sum().backward()

        return measure_peak_bytes(chain)

    peaks = {n: peak_for(n) for n in (256, 512, 1024, 2048)}
    # Exactly affine in N: equal increments per doubling of the step.
    assert peaks[1024] - peaks[512] == 2 * (peaks[512] - peaks[256])
    assert peaks[2048] - peaks[1024] == 2 * (peaks[1024] - peaks[512])
    slope = math.log(peaks[2048] / peaks[256]) / math.log(2048 / 256)
    assert slope == pytest.approx(1.0, abs=0.01)


def test_negative_budget_is_refused():
    with pytest.raises(ValueError, match="budget_bytes"):
        LiveBytesTracker(budget_bytes=-1)


# peak(N) = c0 + c1 N + c2 N^2 of naive causal attention at B = 1, D = 256, H = 4, as tracked (exactly).
NAIVE_ATTENTION = (262152.0, 4096.0, 49.0)


def polynomial(coefficients, lengths):
    return [sum(c * n**i for i, c in enumerate(coefficients)) for n in lengths]


def test_fit_recovers_lines_and_quadratics_and_solves_for_the_budget():
    lengths = [512, 1024, 1536, 2048, 3072, 4096]
    line = fit_memory(lengths, polynomial((4e4, 4776.0), lengths), order=1)
    assert line.predicts and line.coefficients == pytest.approx((4e4, 4776.0), rel=1e-9)
    assert line.max_seq_len(2**30) == pytest.approx((2**30 - 4e4) / 4776, rel=1e-9)
    lengths = [128 * i for i in range(1, 10)]
    quadratic = fit_memory(lengths, polynomial(NAIVE_ATTENTION, lengths), order=2)
    c0, c1, c2 = NAIVE_ATTENTION
    assert quadratic.predicts and quadratic.coefficients == pytest.approx(NAIVE_ATTENTION, rel=1e-6)
    for budget in (2**26, 80 * 2**30):
        n = quadratic.max_seq_len(budget)
        assert c0 + c1 * n + c2 * n * n == pytest.approx(budget, rel=1e-9)
    assert quadratic.max_seq_len(c0 / 2) == 0.0
    flat = fit_memory(lengths, [1e6] * len(lengths), order=1)
    assert flat.coefficients == (pytest.approx(1e6), 0.0) and flat.max_seq_len(2e6) == math.inf


@pytest.mark.parametrize("order", [1, 2])
def test_fit_needs_three_points_per_coefficient(order):
    coefficients = NAIVE_ATTENTION[:order + 1]
    needed = points_needed(order)
    assert needed == 3 * (order + 1)
    lengths = [256 * i for i in range(1, needed + 1)]
    too_few = fit_memory(lengths[:-1] + lengths[:1], polynomial(coefficients, lengths[:-1] + lengths[:1]), order)
    assert not too_few.predicts and math.isnan(too_few.max_seq_len(2**30)) and not too_few.coefficients
    assert f"{needed - 1} lengths measured" in too_few.note and f"needs {needed}" in too_few.note
    assert fit_memory(lengths, polynomial(coefficients, lengths), order).predicts


def test_a_line_through_quadratic_memory_is_refused_for_its_negative_intercept():
    """The issue's case: naive attention's peaks fitted as a straight line (and here with enough points)."""
    lengths = [128 * i for i in range(3, 9)]
    fit = fit_memory(lengths, polynomial(NAIVE_ATTENTION, lengths), order=1)
    assert fit.coefficients[0] < 0 and not fit.predicts
    assert fit.note.startswith("negative intercept c0 = -") and "not c0 + c1 N" in fit.note
    assert math.isnan(fit.max_seq_len(80 * 2**30))


def test_a_small_negative_intercept_is_real_and_shrinking_memory_is_refused():
    lengths = [256 * i for i in range(1, 7)]
    # The delta rule at D = 16 holds tensors of N - C tokens: exactly linear, peak(0) a little below zero.
    states = fit_memory(lengths, polynomial((-3064.0, 3128.0), lengths), order=1)
    assert states.predicts and states.coefficients[0] == pytest.approx(-3064.0)
    lengths = [256 * i for i in range(1, 10)]
    shrinking = fit_memory(lengths, polynomial((5e7, 3e4, -1.0), lengths), order=2)
    assert not shrinking.predicts and shrinking.note.startswith("negative c2 = -1 bytes per token^2")


def test_a_point_off_the_polynomial_is_refused_and_round_off_is_not_negative():
    lengths = [512 * i for i in range(1, 7)]
    peaks = polynomial((0.0, 17520.0), lengths)  # linear attention's: no intercept at all
    exact = fit_memory(lengths, peaks, order=1)
    assert exact.predicts and exact.coefficients[0] == 0.0  # a fitted c0 of +-1e-9 bytes is round-off
    peaks = polynomial((4e6, 17520.0), lengths)
    assert fit_memory(lengths, peaks, order=1).predicts
    bumped = peaks[:3] + [peaks[3] * (1 + 2.5 * FIT_TOLERANCE)] + peaks[4:]
    fit = fit_memory(lengths, bumped, order=1)
    assert not fit.predicts and f"misses N = {lengths[3]}" in fit.note


def test_a_fit_survives_a_table_row_and_an_old_row_predicts_nothing(tmp_path):
    import pandas as pd

    lengths = [128 * i for i in range(1, 10)]
    fits = [fit_memory(lengths, polynomial(NAIVE_ATTENTION, lengths), order=2),
            fit_memory(lengths[:2], polynomial(NAIVE_ATTENTION, lengths[:2]), order=2),
            fit_memory([1024], [5e6], order=1)]
    path = tmp_path / "fits.csv"
    pd.DataFrame([fit.columns() for fit in fits]).to_csv(path, index=False)
    read = [MemoryFit.from_columns(row) for _, row in pd.read_csv(path).iterrows()]
    assert read == fits
    old = MemoryFit.from_columns({"fit_bytes": 1.0, "fit_bytes_per_token": 2.0, "fit_seq_lens": "512,1024"})
    assert not old.predicts and "older ttt-bench" in old.note
