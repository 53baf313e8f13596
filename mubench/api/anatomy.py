"""What methods need to know about a model's structure, for any family: its head, its blocks, its convolutions.

The rules read the module tree alone, so they hold for the digits CNN, torchvision and
transformers models alike, and for a skeleton on the meta device (before any weights
are loaded, when a method says whether it can run).
"""
from __future__ import annotations

import functools
import math

import torch
from torch import nn

NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def head(model: nn.Module) -> nn.Linear:
    """The output layer: the last ``nn.Linear`` in the model's module order (a classifier head, ``fc``, ``lm_head``)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no linear layer to serve as its head")
    return linears[-1]


def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's sequence of blocks, input to output.

    The longest ``nn.ModuleList`` (a transformer's layers, a ResNet's stages; on a tie,
    the last registered: T5's decoder blocks); without one, the direct children that
    hold parameters, the head's excepted (the digits CNN's convolutions and hidden layer).
    """
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if lists:
        longest = max(len(m) for m in lists)
        return list([m for m in lists if len(m) == longest][-1])
    output = head(model) if any(isinstance(m, nn.Linear) for m in model.modules()) else None
    return [child for child in model.children()
            if any(True for _ in child.parameters()) and not any(m is output for m in child.modules())]


def conv2d_layers(model: nn.Module, trainable: bool = False) -> list[tuple[str, nn.Conv2d]]:
    """Every 2-D convolution (only those whose weights train, with ``trainable``: not a frozen VAE's), with its name, in
    module order."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and (m.weight.requires_grad or not trainable)]


def without_convolutions(skeleton) -> str | None:
    """Why a method that edits convolution kernels cannot run on the model ``skeleton()`` builds, or None."""
    if conv2d_layers(skeleton()):
        return None
    return "the model has no 2-D convolution (nn.Conv2d), and the method edits convolution kernels"


def norm_parameters(model: nn.Module) -> set[int]:
    """The ids of the normalisation layers' parameters (BatchNorm, LayerNorm, GroupNorm)."""
    return {id(p) for m in model.modules() if isinstance(m, NORMS) for p in m.parameters(recurse=False)}


def drawn(param: torch.Tensor, init, generator: torch.Generator) -> torch.Tensor:
    """A tensor shaped like ``param`` filled on the CPU by ``init(tensor, generator=...)`` (so the draw is the same on any
    device), then moved to ``param``'s device and dtype."""
    value = torch.empty(param.shape, dtype=torch.float32)
    init(value, generator=generator)
    return value.to(param.device, param.dtype)


def init_like_deep_unlearn(module: nn.Module, generator: torch.Generator) -> None:
    """Deep Unlearn's ``init_weights`` on every submodule: convolutions Kaiming-uniform (fan-out, ReLU) with zero bias,
    BatchNorm weight 1 and bias 0, linear layers Xavier-uniform with zero bias; other layers are left as they are."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                init = (functools.partial(nn.init.kaiming_uniform_, mode="fan_out", nonlinearity="relu")
                        if isinstance(m, nn.Conv2d) else nn.init.xavier_uniform_)
                m.weight.copy_(drawn(m.weight, init, generator))
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                m.weight.fill_(1.0)
                m.bias.zero_()


def reset_like_torch(layer: nn.Linear | nn.Conv2d, generator: torch.Generator) -> None:
    """A linear or convolution layer re-initialised as its ``reset_parameters()`` does (Kaiming-uniform with a = √5, the
    bias uniform in ±1/√fan_in), drawn from ``generator``."""
    fan_in = layer.weight[0].numel()
    with torch.no_grad():
        layer.weight.copy_(drawn(layer.weight, functools.partial(nn.init.kaiming_uniform_, a=math.sqrt(5)), generator))
        if layer.bias is not None:
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            layer.bias.copy_(drawn(layer.bias, functools.partial(nn.init.uniform_, a=-bound, b=bound), generator))
