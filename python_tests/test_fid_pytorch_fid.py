"""ncpfast's FID against pytorch-fid's own code (a test extra: pip install pytorch-fid).

pytorch-fid's weights file cannot be downloaded here, so both networks get the same
randomly initialised state dict: pytorch-fid's InceptionV3(use_fid_inception=True)
is built with its weight download replaced by that dict. Its images go the way
pytorch-fid reads them (PNG files, ToTensor, its resize and scaling); ncpfast's are
the float images themselves. The 2048-d features must agree to float tolerance, and
the Frechet distances computed by pytorch-fid's calculate_frechet_distance and by
ncpfast's frechet_distance from them must agree.

The Frechet distances are compared on the first 256 feature dimensions: a 2048-d
matrix square root takes one to two minutes on a CPU, and the formula does not
depend on the dimension.
"""
import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("pytorch_fid", reason="pytorch-fid is not installed (pip install pytorch-fid: a test extra)")
from pytorch_fid import fid_score  # noqa: E402
from pytorch_fid import inception as pytorch_fid_inception  # noqa: E402

from ncpfast.evaluation import frechet_distance  # noqa: E402
from ncpfast.fid_inception import FEATURE_DIMS, FIDInceptionV3  # noqa: E402

COMPARED_DIMS = 256
# pytorch-fid passes scipy.linalg.sqrtm its deprecated `disp` argument: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def networks():
    """(ncpfast's network, pytorch-fid's) holding the same random parameters and BN statistics."""
    torch.manual_seed(0)
    ours = FIDInceptionV3()
    with torch.no_grad():  # statistics away from (0, 1) so that both must use them
        for module in ours.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    state = ours.state_dict()
    patch = pytest.MonkeyPatch()
    patch.setattr(pytorch_fid_inception, "load_state_dict_from_url",
                  lambda *args, **kwargs: {k: v.clone() for k, v in state.items()})
    try:
        theirs = pytorch_fid_inception.InceptionV3([pytorch_fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIMS]],
                                                   use_fid_inception=True)
    finally:
        patch.undo()
    return ours.eval(), theirs.eval()


def write_pngs(images: torch.Tensor, folder) -> list:
    """Images in [0, 1] as 8-bit PNG files (grey images as mode L), rounded to the nearest byte."""
    folder.mkdir()
    paths = []
    for i, image in enumerate(images):
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        path = folder / f"{i}.png"
        Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def features(networks, tmp_path_factory):
    """Features of two image sets (grey 28x28, colour 32x32) from both implementations."""
    ours, theirs = networks
    g = torch.Generator().manual_seed(1)
    sets = {"grey": torch.rand(3, 1, 28, 28, generator=g), "colour": torch.rand(4, 3, 32, 32, generator=g)}
    root = tmp_path_factory.mktemp("fid_images")
    result = {}
    for name, images in sets.items():
        files = write_pngs(images, root / name)
        reference = fid_score.get_activations(files, theirs, batch_size=len(files), dims=FEATURE_DIMS,
                                              device="cpu", num_workers=0)
        with torch.no_grad():
            result[name] = (ours(images).double().numpy(), reference)
    return result


def test_features_equal_pytorch_fid_on_the_same_images(features):
    for name, (ours, reference) in features.items():
        assert ours.shape == reference.shape == (ours.shape[0], FEATURE_DIMS), name
        assert np.isfinite(reference).all() and reference.std() > 0
        np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5 * np.abs(reference).max(), err_msg=name)


@pytest.mark.filterwarnings("ignore:Matrix is singular:scipy.linalg.LinAlgWarning")  # 7 images, 256 dims
def test_frechet_distance_equals_pytorch_fid_on_those_features(features):
    (grey, grey_reference), (colour, colour_reference) = features["grey"], features["colour"]
    a, b = grey_reference[:, :COMPARED_DIMS], colour_reference[:, :COMPARED_DIMS]
    expected = fid_score.calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0),
                                                    np.cov(b, rowvar=False))
    ours = frechet_distance(torch.from_numpy(grey[:, :COMPARED_DIMS]), torch.from_numpy(colour[:, :COMPARED_DIMS]))
    assert expected > 0 and ours == pytest.approx(expected, rel=1e-5)


def test_frechet_distance_equals_pytorch_fid_with_full_rank_covariances():
    rng = np.random.default_rng(2)
    mixing = rng.normal(size=(64, 64))
    a, b = rng.normal(size=(500, 64)) @ mixing, rng.gamma(2.0, size=(400, 64)) @ mixing.T + 0.3
    expected = fid_score.calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0),
                                                    np.cov(b, rowvar=False))
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(expected, rel=1e-8)
    # float32 features, as the evaluation passes them
    a32, b32 = torch.from_numpy(a).float(), torch.from_numpy(b).float()
    a64, b64 = a32.double().numpy(), b32.double().numpy()
    expected32 = fid_score.calculate_frechet_distance(a64.mean(0), np.cov(a64, rowvar=False), b64.mean(0),
                                                      np.cov(b64, rowvar=False))
    assert frechet_distance(a32, b32) == pytest.approx(expected32, rel=1e-8)
