"""Sample grids as PNG files (no torchvision needed)."""
import math
import os

import numpy as np
import torch
from PIL import Image


def image_grid(images: torch.Tensor, columns: int = 0, padding: int = 2) -> np.ndarray:
    """[N, C, H, W] in [0, 1] -> an HxWx3 uint8 mosaic."""
    images = images.detach().float().clamp(0, 1).cpu()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    n, _, h, w = images.shape
    columns = columns or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / columns))
    grid = torch.ones(3, rows * (h + padding) + padding, columns * (w + padding) + padding)
    for i in range(n):
        r, c = divmod(i, columns)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        grid[:, top:top + h, left:left + w] = images[i]
    return (grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def save_grid(images: torch.Tensor, path: str, columns: int = 0) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(image_grid(images, columns)).save(path)


def save_side_by_side(panels, path: str, gap: int = 8) -> None:
    """Several grids (e.g. base prior | NCP prior) in one PNG, left to right."""
    arrays = [image_grid(p) for p in panels]
    height = max(a.shape[0] for a in arrays)
    padded = [np.pad(a, ((0, height - a.shape[0]), (0, gap), (0, 0)), constant_values=255) for a in arrays]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(np.concatenate(padded, axis=1)).save(path)
