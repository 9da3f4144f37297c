"""What the demo plots as "memory" for each frame."""
from __future__ import annotations

import torch

from mavos.inference import InferenceSession


def reset_peak_memory(device: torch.device) -> None:
    """Start a frame's measurement (CUDA keeps a running peak; the CPU measure needs no reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def memory_mb(session: InferenceSession) -> float:
    """MB for the frame just run: CUDA's peak allocation since ``reset_peak_memory``; on the CPU the bytes of
    the long-term memory tensors that every object group of every view reads (each storage counted once)."""
    if session.device.type == "cuda":
        return torch.cuda.max_memory_allocated(session.device) / 2 ** 20
    return session.memory_bytes() / 2 ** 20


def memory_label(device: torch.device) -> str:
    return "GPU memory, peak per frame (MB)" if device.type == "cuda" else "long-term memory (MB)"
