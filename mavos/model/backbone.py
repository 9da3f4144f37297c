"""Image encoders built with torchvision, returning feature maps at strides 4, 8, 16, 16.

The last stage runs at stride 16 (dilated where the original network would downsample to 32, or, for
Swin-B, dropped and the stride-16 map returned twice), as DeAOT and MAVOS do. BatchNorm is frozen (FrozenBatchNorm2d) and the first ``freeze_at`` stages get no gradient.
ImageNet weights come from a local file: nothing is downloaded at run time.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models
from torchvision.models.swin_transformer import PatchMerging, ShiftedWindowAttention, SwinTransformerBlock
from torchvision.ops.misc import FrozenBatchNorm2d

from mavos.errors import MavosError

WEIGHT_SOURCES = {
    "mobilenetv2": "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth (torchvision MobileNet_V2_Weights.IMAGENET1K_V1)",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth (torchvision ResNet50_Weights.IMAGENET1K_V1)",
    "swinb": "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_base_patch4_window7_224_22k.pth",
}


class WeightsError(MavosError, FileNotFoundError):
    """A backbone's ImageNet weight file is not where the config points (it says where to get it)."""


def load_weight_file(path: str | Path, backbone: str) -> dict[str, torch.Tensor]:
    """Read an ImageNet checkpoint from disk; a missing file says which file and where it comes from."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"{path}: ImageNet weights for backbone '{backbone}' not found. Download "
            f"{WEIGHT_SOURCES.get(backbone, 'the backbone weights')} and place it there, or set "
            f"model.net.encoder.weights=null to start from random initialisation.")
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


class PaddedWindowAttention(ShiftedWindowAttention):
    """Swin window attention as in the detection/segmentation Swin backbones that MAVOS uses.

    Maps whose sides are not multiples of the window are zero-padded (after the block's LayerNorm) and
    the padded tokens take part in attention; shifted blocks always shift, even when the padded map is
    a single window. (torchvision's own forward skips the shift there, and timm shifts before padding;
    both differ from the released MAVOS Swin-B, so this forward is ours.) The relative-position index
    is kept as a (window^2, window^2) buffer, the layout of the released checkpoints.
    """

    def define_relative_position_index(self) -> None:
        wh, ww = self.window_size
        ys, xs = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        dy = ys[:, None] - ys[None, :] + wh - 1
        dx = xs[:, None] - xs[None, :] + ww - 1
        self.register_buffer("relative_position_index", dy * (2 * ww - 1) + dx)

    @staticmethod
    def shift_mask(hp: int, wp: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
        """(num_windows, N, N) additive mask: -100 between tokens that the cyclic shift brought together."""
        def bands(n: int) -> torch.Tensor:
            idx = torch.arange(n, device=device)
            return (idx >= n - window).long() + (idx >= n - shift).long()
        region = (bands(hp)[:, None] * 3 + bands(wp)[None, :])
        region = region.view(hp // window, window, wp // window, window).permute(0, 2, 1, 3)
        region = region.reshape(-1, window * window)
        differs = region[:, :, None] != region[:, None, :]
        return differs.float() * -100.0

    def attention_bias(self, hp: int, wp: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(1, nW or 1, heads, N, N): relative-position bias, plus the shift mask in shifted blocks. It depends only
        on the padded map size and the bias table, so without autograd it is built once and reused (rebuilt when
        the table changes)."""
        table = self.relative_position_bias_table
        cacheable = not torch.is_grad_enabled() and not torch.compiler.is_compiling()
        key = (hp, wp, device, dtype, table.data_ptr(), table._version) if cacheable else None
        cached = getattr(self, "_bias_cache", None)
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        win, shift = self.window_size[0], self.shift_size[0]
        bias = table[self.relative_position_index].permute(2, 0, 1)[None, None]  # 1, 1, heads, N, N
        if shift:
            bias = bias + self.shift_mask(hp, wp, win, shift, device).to(bias.dtype)[None, :, None]
        bias = bias.to(dtype)
        if key is not None:
            self._bias_cache = (key, bias)
        return bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        b, h, w, c = x.shape
        win, shift = self.window_size[0], self.shift_size[0]
        x = F.pad(x, (0, 0, 0, (-w) % win, 0, (-h) % win))
        hp, wp = x.shape[1], x.shape[2]
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        nh, nw, n = hp // win, wp // win, win * win
        windows = x.view(b, nh, win, nw, win, c).permute(0, 1, 3, 2, 4, 5).reshape(b, nh * nw, n, c)
        qkv = self.qkv(windows).view(b, nh * nw, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each (B, nW, heads, N, hd)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.attention_bias(hp, wp, x.device, q.dtype),
                                             dropout_p=self.attention_dropout if self.training else 0.0)
        out = self.proj(out.transpose(2, 3).reshape(b, nh * nw, n, c))
        out = F.dropout(out, p=self.dropout, training=self.training)
        out = out.view(b, nh, nw, win, win, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        return out[:, :h, :w].contiguous()


class SwinPatchEmbed(nn.Module):
    """4x4 patches -> embed_dim channels, LayerNorm; inputs are zero-padded to multiples of the patch."""

    def __init__(self, embed_dim: int = 128, patch: int = 4):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H/4, W/4, C) channels-last."""
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (-w) % self.patch, 0, (-h) % self.patch))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SwinStage(nn.Module):
    """``depth`` Swin blocks (alternating plain / shifted windows), then an optional 2x patch merging."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, drop_paths: list[float], downsample: bool):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, heads, [window, window], [0, 0] if i % 2 == 0 else [window // 2] * 2,
                                 stochastic_depth_prob=drop_paths[i], attn_layer=PaddedWindowAttention)
            for i in range(depth))
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, H, W, C) -> (stage output, merged input of the next stage or None)."""
        for block in self.blocks:
            x = block(x)
        return x, (self.downsample(x) if self.downsample is not None else None)


class SwinBEncoder(Backbone):
    """Swin-B (embed 128, depths 2-2-18, heads 4-8-16, window 7) without its stride-32 stage.

    Matches the released SwinB-MAVOS encoder: three stages with LayerNorms ``norm0..2`` on their
    outputs (strides 4, 8, 16; channels [128, 256, 512]); the stride-16 map is returned twice.
    Stochastic depth grows linearly to ``drop_path`` over all 24 blocks of the full Swin-B, of which the
    first 22 exist here. ``freeze_at`` >= 0 freezes the patch embedding; k >= 2 also freezes stages
    0..k-2 and turns off their stochastic depth, except the last frozen stage's patch merging, which
    keeps training (the released code does exactly this). No BatchNorm: ``frozen_bn`` is ignored.
    Inputs are 16k-sized (align_corners=False models); other sizes are padded as in the original.
    """

    channels = [128, 256, 512, 512]
    depths = (2, 2, 18, 2)
    heads = (4, 8, 16)

    def __init__(self, weights: str | None = None, frozen_bn: bool = True, freeze_at: int = 2,
                 drop_path: float = 0.3, window: int = 7, embed_dim: int = 128):
        super().__init__()
        rates = torch.linspace(0, drop_path, sum(self.depths)).tolist()
        self.patch_embed = SwinPatchEmbed(embed_dim)
        self.layers = nn.ModuleList()
        start = 0
        for i, depth in enumerate(self.depths[:3]):
            self.layers.append(SwinStage(embed_dim * 2 ** i, depth, self.heads[i], window,
                                         rates[start:start + depth], downsample=(i < 2)))
            start += depth
        self.norm0, self.norm1, self.norm2 = (nn.LayerNorm(embed_dim * 2 ** i) for i in range(3))
        if weights:
            self.load_imagenet(load_weight_file(weights, "swinb"))
        if freeze_at >= 0:
            self.freeze([self.patch_embed])
        if freeze_at >= 2:
            frozen = list(self.layers[:freeze_at - 1])
            for stage in frozen:
                for block in stage.blocks:
                    block.stochastic_depth.p = 0.0
            self.freeze(frozen)
            if frozen[-1].downsample is not None:
                for p in frozen[-1].downsample.parameters():
                    p.requires_grad_(True)

    def load_imagenet(self, state: dict[str, torch.Tensor]) -> None:
        """Original Swin checkpoints name the MLP ``mlp.fc1/fc2``; torchvision's blocks ``mlp.0/3``."""
        renamed = {k.replace(".mlp.fc1.", ".mlp.0.").replace(".mlp.fc2.", ".mlp.3."): v for k, v in state.items()}
        super().load_imagenet(renamed)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        outs = []
        for i, stage in enumerate(self.layers):
            out, x = stage(x)
            outs.append(getattr(self, f"norm{i}")(out).permute(0, 3, 1, 2).contiguous())
        return outs + [outs[-1]]
