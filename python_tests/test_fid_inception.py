"""The FID Inception network: pytorch-fid's parameter layout, loading a weights file, clear errors.

The real weights cannot be downloaded here, so the files these tests load hold
randomly initialised parameters in exactly the layout of pytorch-fid's file.
"""
import pytest
import torch
import torch.nn.functional as F

from ncpfast.fid_inception import (
    FEATURE_DIMS,
    NUM_PARAMETERS,
    WEIGHTS_FILE,
    FIDInceptionV3,
    InceptionE,
    _pool_without_padding,
    load_fid_inception,
    prepare_images,
)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A file laid out like pt_inception-2015-12-05-6726825d.pth (no num_batches_tracked, as in that file)."""
    torch.manual_seed(0)
    net = FIDInceptionV3()
    with torch.no_grad():  # BN statistics away from (0, 1) so that loading them matters
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("fid") / WEIGHTS_FILE
    torch.save(state, path)
    return path, net.eval()


def test_network_has_pytorch_fid_parameter_layout():
    state = FIDInceptionV3().state_dict()
    assert sum(p.numel() for p in FIDInceptionV3().parameters()) == NUM_PARAMETERS
    # A few names and shapes of pytorch-fid's file (torchvision's Inception3 naming, 1008 classes).
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_5b.branch_pool.conv.weight"].shape == (32, 192, 1, 1)
    assert state["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert state["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert state["fc.weight"].shape == (1008, FEATURE_DIMS)
    assert not any(k.startswith("AuxLogits") for k in state)


def test_loaded_file_gives_the_saved_network(weights_file):
    path, original = weights_file
    net = load_fid_inception(str(path))
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = net(images)
        expected = original(images)
        one_by_one = torch.cat([net(images[i:i + 1]) for i in range(3)])
    assert features.shape == (3, FEATURE_DIMS) and torch.isfinite(features).all() and (features >= 0).all()
    torch.testing.assert_close(features, expected, rtol=0, atol=0)
    torch.testing.assert_close(one_by_one, features, rtol=1e-4, atol=1e-5)  # eval mode: no batch coupling


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{WEIGHTS_FILE}.*cannot download.*pass its path"):
        load_fid_inception(str(tmp_path / "nothing.pth"))


def test_other_files_are_named_errors(tmp_path, weights_file):
    state = torch.load(weights_file[0], weights_only=True)
    del state["Mixed_5b.branch1x1.conv.weight"]
    state["Mixed_6a.branch3x3.conv.weight"] = torch.zeros(1, 2, 3, 3)
    state["classifier.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "edited.pth")
    with pytest.raises(ValueError, match=r"1 missing \(Mixed_5b.branch1x1.conv.weight\); 1 unexpected "
                                         r"\(classifier.weight\); 1 with other shapes \(Mixed_6a"):
        load_fid_inception(str(tmp_path / "edited.pth"))
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="expected a state dict.*got list"):
        load_fid_inception(str(tmp_path / "list.pth"))
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read as a PyTorch state dict"):
        load_fid_inception(str(tmp_path / "text.pth"))


def test_images_are_prepared_as_pytorch_fid_reads_png_files():
    grey = torch.rand(2, 1, 28, 28)
    x = prepare_images(grey)
    assert x.shape == (2, 3, 299, 299) and -1 <= x.min() and x.max() <= 1
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    # 8-bit quantisation: values that round to the same byte give the same input
    assert torch.equal(prepare_images(torch.full((1, 3, 4, 4), 0.5)), prepare_images(torch.full((1, 3, 4, 4), 0.501)))
    with pytest.raises(ValueError, match=r"images must be \[N, 1 or 3, H, W\], got shape \(2, 2, 8, 8\)"):
        prepare_images(torch.rand(2, 2, 8, 8))


def test_fid_pooling_differs_from_torchvision_where_tensorflow_did():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # The corner's mean is over the 4 pixels inside the image, not 9 with padding.
    assert _pool_without_padding(x)[0, 0, 0, 0] == (0 + 1 + 4 + 5) / 4
    assert F.avg_pool2d(x, 3, 1, 1)[0, 0, 0, 0] == (0 + 1 + 4 + 5) / 9
    torch.manual_seed(0)
    last = InceptionE(8, pool="max").eval()
    avg = InceptionE(8, pool="avg").eval()
    avg.load_state_dict(last.state_dict())
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        # Only the pool branch (the last 192 channels) differs.
        assert torch.equal(last(x)[:, :-192], avg(x)[:, :-192]) and not torch.equal(last(x), avg(x))
    with pytest.raises(ValueError, match="pool must be 'avg' or 'max'"):
        InceptionE(8, pool="mean")
