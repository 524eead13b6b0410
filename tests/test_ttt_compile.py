"""TTT's compiled forms (compile_forms, compile_scope='step': compiled loop steps called from the eager Python loops)
against the eager layer, float32: the forward, a prefill then one step per token, and every gradient of a loss on the
forward. One test per learner shares its compiled steps across the asserts: each compilation takes seconds here."""

import pytest
import torch
from checks import RTOL, assert_rel_close

from ttt_bench.errors import ConfigError
from ttt_bench.layers import build

# Inductor's own imports warn about TorchScript's deprecation.
pytestmark = pytest.mark.filterwarnings("ignore:.torch.jit.script_method. is deprecated:DeprecationWarning")


def _decode_all(decode, x: torch.Tensor, prefix: int):
    y, state = decode(x[:, :prefix], None)
    outputs = [y]
    for t in range(prefix, x.shape[1]):
        y_t, state = decode(x[:, t : t + 1], state)
        outputs.append(y_t)
    return torch.cat(outputs, dim=1), state


def _gradients(forward, layer, x: torch.Tensor) -> list[torch.Tensor]:
    layer.zero_grad()
    x = x.clone().requires_grad_()
    forward(x).square().sum().backward()
    return [p.grad.clone() for p in layer.parameters()] + [x.grad]


@pytest.mark.parametrize("name", ["ttt-linear", "ttt-mlp"])
def test_the_compiled_steps_give_the_eager_outputs_states_and_gradients(name):
    torch._dynamo.reset()  # graphs of another test's layer would count against the recompile limit
    torch.manual_seed(0)
    layer = build(name, d_model=16, n_heads=2)
    x = torch.randn(2, 37, 16, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        eager = layer(x)
        eager_decoded, eager_state = _decode_all(layer.decode, x, 21)
    forms = layer.compile_forms()
    with torch.inference_mode():
        assert_rel_close(forms["forward"](x), eager, RTOL[torch.float32], f"{name}: the compiled forward")
        decoded, state = _decode_all(forms["decode"], x, 21)
        assert_rel_close(decoded, eager_decoded, RTOL[torch.float32], f"{name}: compiled prefill of 21, then steps")
        assert state.tokens == eager_state.tokens == 37
        for i, (a, b) in enumerate(zip(state.tensors(), eager_state.tensors(), strict=True)):
            assert_rel_close(a, b, RTOL[torch.float32], f"{name}: compiled decoding's state, tensor {i}")
    for i, (a, b) in enumerate(zip(_gradients(forms["forward"], layer, x), _gradients(layer, layer, x), strict=True)):
        assert_rel_close(a, b, RTOL[torch.float32], f"{name}: gradient {i} through the compiled forward")
    with torch.inference_mode():
        assert torch.equal(layer(x), eager), "compile_forms changed the layer's own (eager) forward"


def test_compile_scope_whole_and_the_loop_free_variants_compile_the_layer_whole():
    for name, overrides in [("ttt-linear", {"compile_scope": "whole"}), ("ttt-kernel", {}), ("mttt-linear", {})]:
        layer = build(name, d_model=16, n_heads=2, **overrides)
        assert isinstance(layer.compile_forms()["forward"], torch._dynamo.eval_frame.OptimizedModule), name


def test_compile_scope_is_checked():
    with pytest.raises(ConfigError, match="compile_scope"):
        build("ttt-linear", compile_scope="loop")
