"""One source image (a file, or an LMDB value) -> uint8 [3, size, size] by a
data set's ImageRecipe. Every failure is a DataError naming the image."""
import io
from typing import Union

import numpy as np

from .errors import DataError
from .recipes import ImageRecipe

# The first bytes of the encoded formats NVAE's LMDBs hold (JPEG, PNG); anything
# else of exactly 3 * size * size bytes is raw RGB, as NVAE's non-encoded LMDBs are.
_ENCODED_MAGIC = (b"\xff\xd8\xff", b"\x89PNG")


def decode_image(source: Union[str, bytes], recipe: ImageRecipe, name: str) -> np.ndarray:
    """source: a path, or the bytes of an encoded image or of raw RGB pixels.
    name: how an error names the image (a path, or 'LMDB: key')."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, (bytes, bytearray, memoryview)):
        source = bytes(source)
        side = recipe.size
        if len(source) == 3 * side * side and not source.startswith(_ENCODED_MAGIC):
            # Already the data set's size: NVAE stored these pixels after its own crop and resize.
            return np.frombuffer(source, dtype=np.uint8).reshape(side, side, 3).transpose(2, 0, 1).copy()
        other = int(round((len(source) / 3) ** 0.5))
        if not source.startswith(_ENCODED_MAGIC) and 3 * other * other == len(source) and other >= 8:
            raise DataError(f"{name}: raw RGB bytes of a {other}x{other} image, but this data set's images are "
                            f"{side}x{side}: is --data-dir the right data set?")
        opened = io.BytesIO(source)
    else:
        opened = source
    try:
        with Image.open(opened) as image:
            _check_size(image.size, recipe, name)
            image = image.convert("RGB")
            if recipe.crop is not None:
                image = image.crop(recipe.crop)
            image = image.resize((recipe.size, recipe.size),
                                 Image.BICUBIC if recipe.size > 64 else Image.LANCZOS)
            array = np.asarray(image, dtype=np.uint8)
    except DataError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DataError(f"{name}: not a readable image: {error}") from error
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def _check_size(size: tuple[int, int], recipe: ImageRecipe, name: str) -> None:
    width, height = size
    if recipe.source_size is not None and (width, height) != recipe.source_size:
        raise DataError(f"{name}: a {width}x{height} image, but this data set's crop is defined for "
                        f"{recipe.source_size[0]}x{recipe.source_size[1]} images (CelebA's aligned faces): "
                        "is --data-dir the right data set?")
    if recipe.source_size is None and width != height:
        raise DataError(f"{name}: a {width}x{height} image, but this data set's images are square "
                        f"(resized to {recipe.size}x{recipe.size}): is --data-dir the right data set?")
