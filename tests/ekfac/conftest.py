"""Fixtures for the EK-FAC tests."""

from __future__ import annotations

import pytest
import torch
from ekfac_helpers import make_batches


@pytest.fixture(scope="module")
def batches() -> list[dict[str, torch.Tensor]]:
    """Two batches, 7 sequences, 3..10 real tokens each, right padding."""
    return make_batches([[10, 6, 8, 4], [9, 10, 5]])
