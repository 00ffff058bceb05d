"""Batched H&E augmentations on uint8 tensors: random resized crop, flips, 90° rotations, colour and stain jitter."""

from __future__ import annotations

import torch


def random_resized_crop(
    x: torch.Tensor, size: int, scale: tuple[float, float] = (0.5, 1.0), ratio: tuple[float, float] = (0.8, 1.25)
) -> torch.Tensor:
    """Crop a random box of each image (area fraction in ``scale``) and resize to ``size`` (roi_align, batched)."""
    from torchvision.ops import roi_align

    n, _, h, w = x.shape
    dev = x.device
    area = torch.empty(n, device=dev).uniform_(*scale)
    logr = torch.empty(n, device=dev).uniform_(torch.log(torch.tensor(ratio[0])).item(), torch.log(torch.tensor(ratio[1])).item())
    r = torch.exp(logr)
    bw = (torch.sqrt(area * r) * w).clamp(max=w)
    bh = (torch.sqrt(area / r) * h).clamp(max=h)
    x0 = torch.rand(n, device=dev) * (w - bw)
    y0 = torch.rand(n, device=dev) * (h - bh)
    boxes = torch.stack([torch.arange(n, device=dev, dtype=torch.float32), x0, y0, x0 + bw, y0 + bh], dim=1)
    return roi_align(x.float(), boxes, output_size=(size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)


def dihedral(x: torch.Tensor) -> torch.Tensor:
    """Random flip and 90° rotation per image."""
    out = x.clone()
    flip = torch.rand(len(x), device=x.device) < 0.5
    out[flip] = torch.flip(out[flip], dims=(-1,))
    k = torch.randint(0, 4, (len(x),), device=x.device)
    for r in (1, 2, 3):
        sel = k == r
        if sel.any():
            out[sel] = torch.rot90(out[sel], r, dims=(-2, -1))
    return out


def colour_jitter(x: torch.Tensor, strength: float = 0.1) -> torch.Tensor:
    """Per-image brightness / contrast / saturation jitter on [0, 255] floats."""
    n = len(x)
    dev = x.device
    b = 1 + (torch.rand(n, 1, 1, 1, device=dev) * 2 - 1) * strength
    c = 1 + (torch.rand(n, 1, 1, 1, device=dev) * 2 - 1) * strength
    s = 1 + (torch.rand(n, 1, 1, 1, device=dev) * 2 - 1) * strength
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * c + mean
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * s + grey
    return (x * b).clamp(0, 255)


def stain_jitter(x: torch.Tensor, strength: float = 0.2) -> torch.Tensor:
    """Per-image haematoxylin and eosin strength jitter on [0, 255] floats.

    Each image's pixels are unmixed into haematoxylin, eosin and residual optical densities (Ruifrok & Johnston's
    vectors, :data:`skimage.color.hed_from_rgb`); the haematoxylin and eosin densities are multiplied by factors drawn
    uniformly from ``[1 - strength, 1 + strength]`` and recomposed, the residual is kept (the multiplicative part of
    Tellez et al.'s HED augmentation, Med. Image Anal. 2019). Being linear in optical density, it is one 3 x 3 map per
    image.
    """
    from skimage.color import hed_from_rgb, rgb_from_hed

    n = len(x)
    dev = x.device
    factors = torch.ones(n, 3, device=dev)
    factors[:, :2] += (torch.rand(n, 2, device=dev) * 2 - 1) * strength
    unmix = torch.as_tensor(hed_from_rgb, dtype=torch.float32, device=dev)
    mix = torch.as_tensor(rgb_from_hed, dtype=torch.float32, device=dev)
    maps = unmix @ (factors[:, :, None] * mix)  # (n, 3, 3): od_row @ unmix @ diag(f) @ mix
    od = -torch.log((x.float() + 1.0) / 256.0)
    od = torch.einsum("nchw,ncd->ndhw", od, maps)
    return (torch.exp(-od) * 256.0 - 1.0).clamp(0, 255)


def augment(
    x: torch.Tensor,
    size: int,
    *,
    crop_scale: tuple[float, float] = (0.5, 1.0),
    jitter: float = 0.1,
    stain: float = 0.0,
) -> torch.Tensor:
    """The pretraining augmentation pipeline; returns float ``(N, 3, size, size)`` in [0, 255].

    Random resized crop (area fraction in ``crop_scale``), flip and 90° rotation, :func:`stain_jitter` of strength
    ``stain`` (0 = off: no random numbers drawn, so earlier runs are reproduced), then :func:`colour_jitter` of strength
    ``jitter``.
    """
    x = random_resized_crop(x, size, crop_scale)
    x = dihedral(x)
    if stain > 0:
        x = stain_jitter(x, stain)
    return colour_jitter(x, jitter) if jitter > 0 else x
