"""Inference copies of convolutional encoders: BatchNorm folded into the convolution before it, channels-last.

A BatchNorm with fixed statistics (``FrozenBatchNorm2d``, or ``BatchNorm2d`` in eval mode) after a convolution
is an affine map per channel, so it can be folded into that convolution's weight and bias: one pass over the
feature map instead of three (convolution, multiply, add). Weights are stored channels-last, the layout in
which the CPU convolutions here run fastest; depthwise convolutions become ``DepthwiseConv2d`` (compiled on
CUDA, one fused kernel instead of cuDNN's). The trained module is never modified: ``InferenceCopy`` keeps a
folded copy and rebuilds it when any source tensor changes (an optimizer step, loading a checkpoint, moving
devices), so training and validation keep working on the same network.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops.misc import FrozenBatchNorm2d

from mavos.model.layers import DepthwiseConv2d

NORMS = (FrozenBatchNorm2d, nn.BatchNorm2d)


def conv_norm_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Names (conv, norm) of every convolution whose output goes straight into a BatchNorm.

    Recognised structure (torchvision's MobileNetV2 and ResNet): consecutive children of an ``nn.Sequential``,
    and sibling attributes ``convN`` / ``bnN`` (ResNet's stem and bottlenecks, whose forward applies bnN to
    convN's output).
    """
    pairs = []
    for parent_name, parent in module.named_modules():
        prefix = f"{parent_name}." if parent_name else ""
        children = list(parent.named_children())
        if isinstance(parent, nn.Sequential):
            for (a, first), (b, second) in zip(children, children[1:]):
                if isinstance(first, nn.Conv2d) and isinstance(second, NORMS):
                    pairs.append((prefix + a, prefix + b))
        else:
            named = dict(children)
            for name, child in children:
                if isinstance(child, nn.Conv2d) and name.startswith("conv"):
                    norm = named.get("bn" + name[len("conv"):])
                    if isinstance(norm, NORMS):
                        pairs.append((prefix + name, prefix + "bn" + name[len("conv"):]))
    return pairs


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """An eval-mode copy of ``module`` with every conv -> BatchNorm pair folded into one convolution,
    depthwise convolutions as ``DepthwiseConv2d`` and 4-d weights in channels-last layout. Gradients are off
    in the copy; ``module`` is untouched."""
    folded = copy.deepcopy(module).eval()
    for conv_name, norm_name in conv_norm_pairs(folded):
        conv = folded.get_submodule(conv_name)
        norm = folded.get_submodule(norm_name)
        if isinstance(norm, nn.BatchNorm2d) and not norm.track_running_stats:
            continue  # batch statistics at test time: nothing to fold
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var,
                                            float(norm.eps), norm.weight, norm.bias)
        conv.weight, conv.bias = weight, bias
        parent_name, _, child = norm_name.rpartition(".")
        setattr(folded.get_submodule(parent_name) if parent_name else folded, child, nn.Identity())
    for m in folded.modules():
        if type(m) is nn.Conv2d and m.in_channels == m.out_channels == m.groups > 1:
            m.__class__ = DepthwiseConv2d  # the same module with a faster compiled form on CUDA
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded.to(memory_format=torch.channels_last)


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, NORMS) for m in module.modules())


class WeightVersions:
    """Tells whether any parameter or buffer of a module changed since a given moment, by each tensor's storage
    address and version counter (bumped by every in-place update: optimizer steps, ``load_state_dict``,
    ``copy_``; the address changes with ``.to()``). The list of tensors is collected once: walking the module
    tree on every call (every frame) took 1.4 ms on a 2-core CPU for MobileNetV2's 260 tensors, the cached list
    0.15 ms. A parameter *object* assigned anew (``module.weight = nn.Parameter(...)``) is therefore not
    noticed; use ``load_state_dict`` or ``copy_``."""

    def __init__(self, module: nn.Module):
        self.tensors = [*module.parameters(), *module.buffers()]

    def key(self) -> tuple:
        return tuple((t.data_ptr(), t._version) for t in self.tensors)


class InferenceCopy:
    """Holds ``fold_batchnorm(source)`` and rebuilds it when a tensor of ``source`` changed since
    (``WeightVersions``)."""

    def __init__(self):
        self._key: tuple | None = None
        self._module: nn.Module | None = None
        self._versions: tuple[int, WeightVersions] | None = None  # (id of the source, its tensors)

    def __deepcopy__(self, memo) -> "InferenceCopy":  # a copied network (e.g. EMA) builds its own when used
        return InferenceCopy()

    def __getstate__(self) -> dict:
        return {"_key": None, "_module": None, "_versions": None}

    def _fingerprint(self, source: nn.Module) -> tuple:
        if self._versions is None or self._versions[0] != id(source):
            self._versions = (id(source), WeightVersions(source))
        return self._versions[1].key()

    def get(self, source: nn.Module) -> nn.Module:
        key = self._fingerprint(source)
        if key != self._key or self._module is None:
            self._module, self._key = None, None  # free the old copy before building the new one
            self._module, self._key = fold_batchnorm(source), key
        return self._module
