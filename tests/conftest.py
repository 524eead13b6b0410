import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _nan_filled_empty(monkeypatch):
    """Every test sees NaN in torch.empty memory (house style: unwritten outputs must show)."""
    from checks import nan_filled_empty

    nan_filled_empty(monkeypatch)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
