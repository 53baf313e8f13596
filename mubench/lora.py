"""LoRA (peft) on any model the harness unlearns: MU-Bench's parameter-efficient setting.

The adapters go on the attention query and value projections, named as each family
names them under transformers 5 (BERT ``query``/``value``, ViT, HuBERT, Wav2Vec2 and
Whisper ``q_proj``/``v_proj``, DistilBERT ``q_lin``/``v_lin``); models without
attention (ResNet, MobileNet, ConvNeXt, small CNNs) get them on every convolution (but
depthwise ones) and linear layer. The classification head is trained in full, as in MU-Bench.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from mubench.errors import UserError

ATTENTION_PAIRS = (("query", "value"), ("q_proj", "v_proj"), ("q_lin", "v_lin"), ("q", "v"))
HEAD_NAMES = ("classifier", "pre_classifier", "projector", "score")
ADAPTABLE = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class LoraSpec:
    """``rank``, or the share of the model's parameters to train (``fraction``), which sets the rank.

    ``alpha`` defaults to the rank (MU-Bench's choice), so the adapter's scale is 1.
    """

    rank: int | None = None
    fraction: float | None = None
    alpha: float | None = None
    dropout: float = 0.1

    def __post_init__(self):
        if (self.rank is None) == (self.fraction is None):
            raise UserError("LoRA: give either a rank or a trainable-parameter fraction, not both or neither")
        if self.rank is not None and self.rank < 1:
            raise UserError(f"--lora-rank must be at least 1, got {self.rank}")
        if self.fraction is not None and not 0 < self.fraction < 1:
            raise UserError(f"--lora-fraction lies strictly between 0 and 1, got {self.fraction}")


def layout(model: nn.Module) -> tuple[list[str], list[str]]:
    """The modules that get adapters and the head modules trained in full (full names)."""
    heads = [name for name, _ in model.named_children() if name in HEAD_NAMES]
    layers = {name: m for name, m in model.named_modules()
              if isinstance(m, ADAPTABLE) and getattr(m, "groups", 1) == 1  # not depthwise convolutions
              and not any(name == h or name.startswith(h + ".") for h in heads)}
    leaves = {name.rsplit(".", 1)[-1] for name in layers}
    for pair in ATTENTION_PAIRS:
        if set(pair) <= leaves:
            return [name for name in layers if name.rsplit(".", 1)[-1] in pair], heads
    names = list(layers)
    if not heads and names and isinstance(layers[names[-1]], nn.Linear):
        heads, names = [names[-1]], names[:-1]  # a plain stack: its last linear layer is the head
    if not names:
        raise UserError(f"LoRA: {type(model).__name__} has no linear or convolution layers to adapt")
    return names, heads


def adapter_cost(module: nn.Module) -> int:
    """Parameters that a rank-1 adapter adds to ``module`` (A: in·k² → 1, B: 1 → out)."""
    if isinstance(module, nn.Conv2d):
        return module.in_channels * module.kernel_size[0] * module.kernel_size[1] + module.out_channels
    return module.in_features + module.out_features


def rank_for(model: nn.Module, targets: list[str], heads: list[str], fraction: float) -> int:
    """The largest rank whose adapters and head stay within ``fraction`` of the model's parameters."""
    modules = dict(model.named_modules())
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for h in heads for p in modules[h].parameters())
    per_rank = sum(adapter_cost(modules[t]) for t in targets)
    rank = int((fraction * total - head) // per_rank)
    if rank < 1:
        raise UserError(f"--lora-fraction {fraction}: the smallest LoRA on this model (rank 1 and its head) "
                        f"trains {(per_rank + head) / total:.4f} of its parameters")
    return rank


def apply_lora(model: nn.Module, spec: LoraSpec) -> tuple[nn.Module, dict]:
    """``model`` with LoRA adapters (only they and the head train) and a record of the setting."""
    from peft import LoraConfig, get_peft_model

    targets, heads = layout(model)
    total = sum(p.numel() for p in model.parameters())
    rank = spec.rank or rank_for(model, targets, heads, spec.fraction)
    alpha = spec.alpha or rank
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=spec.dropout, target_modules=targets,
                        modules_to_save=heads or None)
    adapted = get_peft_model(model, config)
    for module in adapted.modules():  # peft's conv wrapper hides the geometry that TF-padding convs read
        base = getattr(module, "base_layer", None)
        if isinstance(base, nn.Conv2d):
            for attr in ("stride", "padding", "dilation", "kernel_size"):
                if not hasattr(module, attr):
                    setattr(module, attr, getattr(base, attr))
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    record = {"method": "lora", "rank": rank, "alpha": alpha, "dropout": spec.dropout,
              "target_modules": sorted({t.rsplit(".", 1)[-1] for t in targets}), "n_adapted": len(targets),
              "trained_in_full": heads, "requested_fraction": spec.fraction, "trainable_fraction": trainable / total}
    return adapted, record
