"""Small building blocks shared by the propagation, MCA and decoder modules."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample (batch dim 0) while training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep


class ConvGroupNorm(nn.Module):
    """Conv2d followed by GroupNorm (8 groups), the decoder's unit."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, groups: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
        self.norm = nn.GroupNorm(groups, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise convolution (``groups`` = channels), computed differently where that is faster.

    Compiled on CUDA it is a sum of shifted, weighted copies of the input, which inductor fuses into one
    memory-bound kernel: cuDNN's depthwise kernels for channels-last bf16 maps ran far below the memory
    bandwidth on an H100 (a 3x3 over 960 channels at 31x54, 3 MB in and out: 0.1 ms a call). A fused 5x5 of
    the propagation takes 55 us a call against 33 us for PyTorch's kernel (bf16, H100; inductor computes their
    input, attention x U, again in every tap), yet the whole step ran slower with the 5x5s on that kernel (3.43
    against 3.34 ms a frame: the layout copies around it); docs/speed_log.md.
    Eager, or on the CPU, it is ``nn.Conv2d``. Same parameters and state-dict keys as ``nn.Conv2d``.
    ``fused_kernel_sizes`` says which kernels take the fused form (the speed benchmark's ``--fused-depthwise``
    sets it to compare the two forms on a GPU).
    """

    fused_kernel_sizes: frozenset[int] = frozenset({3, 5})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shifted = (x.is_cuda and torch.compiler.is_compiling() and self.padding_mode == "zeros"
                   and not isinstance(self.padding, str) and self.kernel_size[0] in self.fused_kernel_sizes)
        return shifted_depthwise_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation) \
            if shifted else super().forward(x)


def shifted_depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                             stride: tuple[int, int], padding: tuple[int, int],
                             dilation: tuple[int, int]) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups=C)`` for a (C, 1, kh, kw) weight, as a sum
    over the kernel's taps of strided slices of the zero-padded input times one weight per channel. Sums in
    float32 and returns the dtype the convolution would (autocast's, when it is on)."""
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    kh, kw = weight.shape[-2:]
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho = (x.shape[-2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (x.shape[-1] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    padded = F.pad(x.to(dtype), (pw, pw, ph, ph)).float()
    taps = weight.to(dtype).float()[:, 0]
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = padded[:, :, i * dh:i * dh + (ho - 1) * sh + 1:sh, j * dw:j * dw + (wo - 1) * sw + 1:sw]
            term = tap * taps[None, :, i, j, None, None]
            out = term if out is None else out + term
    if bias is not None:
        out = out + bias.to(dtype).float()[None, :, None, None]
    return out.to(dtype)


def tokens_to_map(tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H*W, C) row-major tokens -> (B, C, H, W) map.

    For contiguous tokens this is a view in channels-last layout (no copy), and convolutions on it run
    channels-last and return channels-last maps (tokens again, see ``map_to_tokens``): the fast layout for the
    depthwise and 1x1 convolutions over token maps. (A transpose-then-reshape view would have a batch stride
    that the CPU convolution does not recognise as channels-last, and it would convert layouts twice.)
    """
    b, n, c = tokens.shape
    h, w = size
    if n != h * w:
        raise ValueError(f"{n} tokens do not form a {h}x{w} map")
    return tokens.reshape(b, h, w, c).permute(0, 3, 1, 2)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) map -> (B, H*W, C) row-major tokens (a view; contiguous when the map is channels-last)."""
    return x.flatten(2).transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, bias: torch.Tensor | None = None,
              dropout: float = 0.0) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v over (..., L, d) tensors, written out (matmul, softmax, matmul).

    Not ``scaled_dot_product_attention``: the propagation's values are 1024 wide against 128-wide queries and
    keys, which no fused kernel takes at full speed. SDPA falls back to a slow generic path on the CPU and to
    the memory-efficient kernel on CUDA, which measured 2-3x slower than these three operations in bf16 on an
    H100 (``experiments/attention_paths.py``: long-term 0.38 vs 0.13 ms, self-attention 0.21 vs 0.10 ms).
    """
    scores = torch.matmul(q * scale, k.transpose(-1, -2))
    if bias is not None:
        scores = scores + bias
    weights = torch.softmax(scores, dim=-1)
    if dropout:
        weights = F.dropout(weights, dropout)
    return torch.matmul(weights, v)


def in_place() -> bool:
    """Whether an activation may overwrite its input: only without autograd (inference, validation), and only
    where the caller passes a temporary it does not read again. Writing over the input instead of into a new
    tensor measured 3.3 against 5.1 ms for the self-attention's SiLU-gated value pair at 481x849 on 2 CPU
    threads; compiled code is the same either way (inductor fuses both)."""
    return not torch.is_grad_enabled()


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU of a temporary the caller does not read again (in place without autograd: ``in_place``)."""
    return F.silu(x, inplace=in_place())
