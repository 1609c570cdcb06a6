"""A split of a data set: len(), `labels` (or None), `uint8_batch(indices)` (uint8
[B, C, H, W], what the loader's workers return: a quarter of float32's bytes to
copy between processes and to the GPU) and `batch(indices)` (float32 in [0, 1]).
`in_memory` says whether reading a batch is only a gather (no decode, no disk)."""
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .decode import decode_image
from .recipes import ImageRecipe


@dataclass
class Split:
    """Images held as one uint8 tensor [N, C, H, W] (in memory, or memory-mapped
    from a prepared data set)."""
    images: torch.Tensor
    labels: Optional[torch.Tensor]
    in_memory = True

    def __len__(self):
        return self.images.shape[0]

    def uint8_batch(self, indices: torch.Tensor) -> torch.Tensor:
        return self.images[indices]

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """Images as float32 in [0, 1]."""
        return self.uint8_batch(indices).float().div_(255.0)


class EncodedImageSplit:
    """Images decoded on demand from encoded sources (image files, LMDB values):
    `sources` has len() and read(i) -> (path or bytes, the name an error gives)."""

    in_memory = False
    labels = None

    def __init__(self, sources, recipe: ImageRecipe):
        self.sources, self.recipe = sources, recipe

    def __len__(self):
        return len(self.sources)

    def uint8_batch(self, indices: torch.Tensor) -> torch.Tensor:
        images = []
        for i in indices:
            source, name = self.sources.read(int(i))
            images.append(decode_image(source, self.recipe, name))
        size = self.recipe.size
        return torch.from_numpy(np.stack(images)) if images else torch.empty(0, 3, size, size, dtype=torch.uint8)

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        return self.uint8_batch(indices).float().div_(255.0)


class FileSources:
    """Image files by index."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def read(self, index: int) -> tuple[str, str]:
        return self.paths[index], self.paths[index]


class LazyImageSplit(EncodedImageSplit):
    """A folder's image files, read from disk on demand (the raw CelebA-size sets)."""

    def __init__(self, paths: list[str], size: int, crop: Optional[tuple[int, int, int, int]] = None,
                 recipe: Optional[ImageRecipe] = None):
        super().__init__(FileSources(paths), recipe or ImageRecipe(size, crop))
        self.paths = paths
