"""The step API (prefill, then one step per token) against the full forward, beyond the contract's `decode` check
(tests/test_layer_contract.py runs that one on every registered layer): every causal built-in layer decodes, at
odd lengths, fresh inputs and float32 too; non-causal layers refuse; attention's state grows with the context while
every recurrent and TTT state stays the same size."""

import pytest
import torch

from ttt_bench import layer_check
from ttt_bench.layers import build, is_causal, names
from ttt_bench.layers.control import CONTROL_LAYER

CAUSAL = [name for name in names() if is_causal(name)]
NON_CAUSAL = [name for name in names() if not is_causal(name)]
KV_CACHE_LAYERS = [name for name in CAUSAL if name.startswith("attention") or name == "ttt-kernel"]


def _decode_all(layer, x: torch.Tensor, k: int) -> torch.Tensor:
    outputs, _ = layer_check._prefill_then_step(layer, x, k)
    return torch.cat(outputs, dim=1)


@pytest.mark.parametrize("name", CAUSAL)
def test_every_causal_layer_decodes(name):
    assert build(name, d_model=16, n_heads=2).decodes, f"{name} is causal but has no decode()"


@pytest.mark.parametrize("name", CAUSAL)
@pytest.mark.parametrize("seq_len, prefix, seed", [(63, 40, 1), (500, 250, 2)])
def test_decoding_an_odd_length_with_fresh_inputs_equals_the_forward(name, seq_len, prefix, seed):
    if name.endswith("-primal") and seq_len > 100:
        pytest.skip("the token-by-token reference form is checked at N = 63")
    layer = layer_check.small(name)
    x = torch.randn(1, seq_len, layer_check.D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode(), layer_check.unwritten_memory_as_nan():
        layer_check.check_close(_decode_all(layer, x, prefix), layer(x), 1e-10, f"{name} at N={seq_len}")


@pytest.mark.parametrize("name", CAUSAL)
def test_decoding_in_float32_equals_the_forward_to_float32_precision(name):
    layer = layer_check.small(name, torch.float32)
    x = torch.randn(2, 37, layer_check.D_MODEL, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        layer_check.check_close(_decode_all(layer, x, 17), layer(x), 1e-4, f"{name} in float32")


@pytest.mark.parametrize("name", CAUSAL)
def test_the_state_size_is_stated_in_bytes_of_the_layers_dtype(name):
    layer = layer_check.small(name, torch.float32)
    x = torch.randn(3, 21, layer_check.D_MODEL)
    with torch.inference_mode():
        _, state = layer.prefill(x)
        _, state = layer.step(x[:, :1], state)
    assert state.tokens == 22
    assert state.numel == layer.decode_state_numel(3, 22)
    assert state.nbytes == 4 * state.numel


@pytest.mark.parametrize("name", CAUSAL)
def test_only_a_kv_cache_grows_with_the_context(name):
    layer = layer_check.small(name)
    sizes = [layer.decode_state_numel(2, context) for context in (1000, 2000, 4000)]
    if name == CONTROL_LAYER:
        assert sizes == [0, 0, 0]  # it carries nothing from one token to the next
    elif name in KV_CACHE_LAYERS:
        assert sizes[1] - sizes[0] == sizes[0] and sizes[2] == 2 * sizes[1], sizes  # exactly proportional
    else:
        assert sizes[0] == sizes[1] == sizes[2] > 0, sizes
        assert layer.decode_state_numel(4, 1000) == 2 * sizes[0]


@pytest.mark.parametrize("name", NON_CAUSAL)
def test_a_non_causal_layer_refuses_to_decode_and_says_why(name):
    layer = layer_check.small(name)
    assert not layer.decodes
    with pytest.raises(NotImplementedError, match="cannot decode token by token: it is not causal"):
        layer.prefill(torch.randn(1, 4, layer_check.D_MODEL, dtype=torch.float64))


def test_step_takes_one_token():
    layer = layer_check.small("ttt-linear")
    x = torch.randn(1, 4, layer_check.D_MODEL, dtype=torch.float64)
    _, state = layer.prefill(x)
    with pytest.raises(ValueError, match=r"step takes one token, x_t: \[B, 1, D\]; got shape \[1, 2, 16\]"):
        layer.step(x[:, :2], state)


@pytest.mark.parametrize("name", KV_CACHE_LAYERS)
def test_a_kv_cache_appends_in_place_and_a_branch_copies_first(name):
    """Appending a token writes into the cache's block (no copy of the whole cache per token); a second extension of
    the same state (a branch) copies, so each branch reads its own keys and the first is left as it was."""
    layer = layer_check.small(name)
    x = torch.randn(1, 12, layer_check.D_MODEL, dtype=torch.float64)
    with torch.inference_mode():
        _, state = layer.prefill(x[:, :10])
        first_y, first = layer.step(x[:, 10:11], state)
        assert first.keys.data_ptr() == state.keys.data_ptr()  # the same block, written in place
        second_y, second = layer.step(x[:, 11:12], state)
        assert second.keys.data_ptr() != state.keys.data_ptr()
        again_y, _ = layer.step(x[:, 10:11], first)  # the first branch reads its own token, not the second's
        alone_y, _ = layer.step(x[:, 10:11], layer.prefill(x[:, :11])[1])
    layer_check.check_close(again_y, alone_y, 1e-12, "the first branch after a second branch was taken")
    fresh_y, _ = layer.step(x[:, 11:12], layer.prefill(x[:, :10])[1])
    layer_check.check_close(second_y, fresh_y, 1e-12, "the second branch")
