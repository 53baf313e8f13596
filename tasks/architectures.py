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


def resnet18(task, width: int = 64) -> nn.Module:
    """ResNet-18 from scratch for small images, as Deep Unlearn trains it: torchvision's ResNet-18 with a 3×3, stride-1
    stem and no max-pooling (the CIFAR form); ``width`` channels in its first stage (64; fewer for fixtures), doubled at
    each of the next three."""
    from torchvision.models.resnet import BasicBlock, ResNet

    kwargs = task.model_kwargs()
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=kwargs["num_labels"])
    if width != 64:
        model.inplanes = width
        for stage in range(4):
            setattr(model, f"layer{stage + 1}", model._make_layer(BasicBlock, width * 2**stage, 2, stride=1 if stage == 0 else 2))
        model.bn1, model.fc = nn.BatchNorm2d(width), nn.Linear(8 * width, kwargs["num_labels"])
    model.conv1 = nn.Conv2d(kwargs["in_channels"], width, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


def tiny_vit(task, embed_dims: list | None = None, depths: list | None = None, num_heads: list | None = None,
             window_sizes: list | None = None, drop_path_rate: float = 0.1) -> nn.Module:
    """TinyViT (Wu et al. 2022; timm's implementation) from scratch at the task's own resolution; by default the 5M
    configuration Deep Unlearn uses (embed dims 64/128/160/320, depths 2/2/6/2, heads 2/4/5/10, windows 7/7/14/7)."""
    from timm.models.tiny_vit import TinyVit

    kwargs = task.model_kwargs()
    return TinyVit(in_chans=kwargs["in_channels"], num_classes=kwargs["num_labels"],
                   embed_dims=tuple(embed_dims or (64, 128, 160, 320)), depths=tuple(depths or (2, 2, 6, 2)),
                   num_heads=tuple(num_heads or (2, 4, 5, 10)), window_sizes=tuple(window_sizes or (7, 7, 14, 7)),
                   drop_path_rate=drop_path_rate)


def mlp(task, hidden: list | None = None, dropout: float = 0.0) -> nn.Module:
    """A multilayer perceptron over feature vectors: ``hidden`` widths (default [64, 64]), each a Linear layer, ReLU and
    ``dropout``, then a Linear head to ``num_labels``."""
    kwargs = task.model_kwargs()
    layers, width = [], kwargs["in_features"]
    for size in hidden if hidden is not None else [64, 64]:
        layers += [nn.Linear(width, size), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
        width = size
    return nn.Sequential(*layers, nn.Linear(width, kwargs["num_labels"]))
