"""Which attention backend a runner uses: the one asked for if usable here, or the best available."""

from __future__ import annotations

import torch

from engine.attention import AttentionBackend, FlashBackend, SdpaBackend, flash_available, flex_available

BACKENDS = ("sdpa", "flex", "flash")


def _flex(device: torch.device) -> AttentionBackend:
    from engine.flex_attention import FlexBackend
    return FlexBackend(device)


def select_backend(device: torch.device | str, requested: str = "auto",
                   dtype: torch.dtype | None = None) -> AttentionBackend:
    """The requested backend if usable here, or for ``auto``: flash, then flex on CUDA; sdpa otherwise."""
    device = torch.device(device)
    half = dtype in (None, torch.float16, torch.bfloat16)
    if requested == "auto":
        if device.type == "cuda" and half and flash_available():
            return FlashBackend()
        if device.type == "cuda" and flex_available():
            return _flex(device)
        return SdpaBackend()
    if requested == "sdpa":
        return SdpaBackend()
    if requested == "flex":
        if not flex_available():
            raise ValueError("attention backend 'flex' needs torch with FlexAttention (torch>=2.5)")
        return _flex(device)
    if requested == "flash":
        if device.type != "cuda" or not flash_available():
            raise ValueError("attention backend 'flash' needs CUDA and the flash-attn package")
        if not half:
            raise ValueError("attention backend 'flash' needs float16 or bfloat16")
        return FlashBackend()
    raise ValueError(f"unknown attention backend {requested!r}; choose auto or one of {BACKENDS}")
