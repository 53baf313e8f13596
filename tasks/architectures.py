"""Model architectures built from scratch (no hub download)."""
from __future__ import annotations

from torch import nn


def small_cnn(task, width: int = 32, hidden: int = 128) -> nn.Module:
    """Two 3×3 convolutions, 2×2 max-pooling to a 4×4 grid, and a two-layer classifier."""
    kwargs = task.model_kwargs()
    return nn.Sequential(
        nn.Conv2d(kwargs["in_channels"], width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveMaxPool2d(4), nn.Flatten(),
        nn.Linear(2 * width * 16, hidden), nn.ReLU(),
        nn.Linear(hidden, kwargs["num_labels"]),
    )
