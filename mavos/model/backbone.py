"""Image encoders built with torchvision / timm, returning feature maps at strides 4, 8, 16, 16.

The last stage runs at stride 16 (dilated where the original network would downsample to 32), as DeAOT
and MAVOS do. BatchNorm is frozen (FrozenBatchNorm2d) and the first ``freeze_at`` stages get no gradient.
ImageNet weights come from a local file: nothing is downloaded at run time.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models
from torchvision.ops.misc import FrozenBatchNorm2d

WEIGHT_SOURCES = {
    "mobilenetv2": "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth (torchvision MobileNet_V2_Weights.IMAGENET1K_V1)",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth (torchvision ResNet50_Weights.IMAGENET1K_V1)",
    "swinb": "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_base_patch4_window7_224_22k.pth",
}


def load_weight_file(path: str | Path, backbone: str) -> dict[str, torch.Tensor]:
    """Read an ImageNet checkpoint from disk; a missing file says which file and where it comes from."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: ImageNet weights for backbone '{backbone}' not found. Download "
            f"{WEIGHT_SOURCES.get(backbone, 'the backbone weights')} and place it there, or set "
            f"model.encoder.weights=null to start from random initialisation.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


class Backbone(nn.Module):
    """Base: ``stages`` run in sequence; ``outputs`` picks which stage outputs to return (4 maps)."""

    channels: list[int]

    def __init__(self):
        super().__init__()
        self._frozen: list[nn.Module] = []

    def freeze(self, modules: list[nn.Module]) -> None:
        for m in modules:
            for p in m.parameters():
                p.requires_grad_(False)

    def load_imagenet(self, state: dict[str, torch.Tensor]) -> None:
        own = self.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not usable:
            raise ValueError(f"{type(self).__name__}: the weight file matches none of the encoder's parameters")
        self.load_state_dict(usable, strict=False)


class MobileNetV2Encoder(Backbone):
    """torchvision MobileNetV2; the stride-32 stage (features 14-17) is made stride 16 with dilation 2.

    Channels [24, 32, 96, 1280]. ``freeze_at``: 1 freezes the stem, 2 the whole stride-4 stage, ...
    """

    channels = [24, 32, 96, 1280]

    def __init__(self, weights: str | None = None, frozen_bn: bool = True, freeze_at: int = 2):
        super().__init__()
        norm = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
        net = models.mobilenet_v2(weights=None, norm_layer=norm)
        self.features = net.features
        # Keep output stride 16: block 14 loses its stride; later blocks dilate by 2 (block 14's own conv keeps dilation 1).
        for idx in range(14, 18):
            dw = self.features[idx].conv[1][0]
            dw.stride = (1, 1)
            if idx > 14:
                dw.dilation, dw.padding = (2, 2), (2, 2)
        if weights:
            self.load_imagenet(load_weight_file(weights, "mobilenetv2"))
        bounds = [0, 4, 7, 14, 19]
        self._stages = [self.features[bounds[i]:bounds[i + 1]] for i in range(4)]
        if freeze_at >= 1:
            self.freeze([self.features[0]])
        self.freeze([s for i, s in enumerate(self._stages, start=2) if freeze_at >= i])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self._stages:
            x = stage(x)
            outs.append(x)
        return outs


class ResNet50Encoder(Backbone):
    """torchvision ResNet-50 up to layer3 (stride 16); the stride-16 map is returned twice, as in DeAOT.

    Channels [256, 512, 1024, 1024].
    """

    channels = [256, 512, 1024, 1024]

    def __init__(self, weights: str | None = None, frozen_bn: bool = True, freeze_at: int = 2):
        super().__init__()
        norm = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
        net = models.resnet50(weights=None, norm_layer=norm)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        if weights:
            self.load_imagenet(load_weight_file(weights, "resnet50"))
        if freeze_at >= 1:
            self.freeze([self.conv1, self.bn1])
        self.freeze([s for i, s in enumerate([self.layer1, self.layer2, self.layer3], start=2) if freeze_at >= i])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        s4 = self.layer1(x)
        s8 = self.layer2(s4)
        s16 = self.layer3(s8)
        return [s4, s8, s16, s16]


ENCODERS = {"mobilenetv2": MobileNetV2Encoder, "resnet50": ResNet50Encoder}


def build_backbone(name: str, weights: str | None = None, frozen_bn: bool = True, freeze_at: int = 2) -> Backbone:
    try:
        cls = ENCODERS[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(ENCODERS)}") from None
    return cls(weights=weights, frozen_bn=frozen_bn, freeze_at=freeze_at)
