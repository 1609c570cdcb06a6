"""What each data set is: its name, the shape of the images it yields and, for
the image data sets, how a source image becomes one (NVAE's crop, the resize).

The recipe is written into a prepared data set's manifest, so a prepared
directory says how its pixels were made."""
from dataclasses import asdict, dataclass
from typing import Optional

from .errors import DataError

DATASETS = ("mnist-embedded", "mnist", "cifar10", "celeba64", "celebahq256", "ffhq256")

_SHAPES = {"mnist-embedded": (1, 32, 32), "mnist": (1, 32, 32), "cifar10": (3, 32, 32),
           "celeba64": (3, 64, 64), "celebahq256": (3, 256, 256), "ffhq256": (3, 256, 256)}


@dataclass(frozen=True)
class ImageRecipe:
    """A source image -> uint8 [3, size, size]: RGB, `crop` (PIL's box: left, upper,
    right, lower) when given, then a resize to size x size (Lanczos up to 64 pixels,
    bicubic above, as ncpfast has always read these sets)."""
    size: int
    crop: Optional[tuple[int, int, int, int]] = None
    # The (width, height) the crop box is defined for; None: any square image. An
    # image of another size is a DataError (most likely the wrong data set).
    source_size: Optional[tuple[int, int]] = None

    def describe(self) -> dict:
        return {**asdict(self), "resample": "bicubic" if self.size > 64 else "lanczos", "mode": "RGB"}


# NVAE's CelebA-64: CelebA's aligned 178x218 images cropped to the face box
# (15, 40, 178 - 15, 218 - 30), then resized to 64x64.
IMAGE_RECIPES = {
    "celeba64": ImageRecipe(64, crop=(15, 40, 178 - 15, 218 - 30), source_size=(178, 218)),
    "celebahq256": ImageRecipe(256),
    "ffhq256": ImageRecipe(256),
}


def image_shape(dataset: str) -> tuple[int, int, int]:
    """(channels, height, width) of the images a data set yields."""
    if dataset not in _SHAPES:
        raise DataError(f"unknown data set {dataset!r}; expected one of {', '.join(DATASETS)}")
    return _SHAPES[dataset]


def check_name(dataset: str) -> None:
    if dataset not in DATASETS:
        raise DataError(f"unknown data set {dataset!r}; expected one of {', '.join(DATASETS)}")
