"""Small data sets written in their real on-disk formats, shared by the data tests."""
import os

import numpy as np
from PIL import Image


def write_celeba_folder(directory, n=12, seed=2, suffix=".jpg"):
    """n random 178x218 images (CelebA's aligned size), named like CelebA's."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(
            os.path.join(directory, f"{i:06d}{suffix}"))
    return directory
