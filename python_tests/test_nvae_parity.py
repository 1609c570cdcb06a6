"""Parity of the hierarchical VAE with NVAE (NVlabs/NVAE): parameter counts and flow cells.

The reference numbers were measured by building NVAE's own AutoEncoder (NVlabs/NVAE
at its published HEAD, on the CPU, its `.cuda()` calls stubbed from the outside) with
the arguments of each training command in NVAE's README (`--use_se --res_dist`,
arch_instance res_mbconv; `--num_nf` 0, 1, 1, 2) and summing `p.numel()` over
`model.parameters()`. With `--num_nf 0` the same commands give 129,215,680 (cifar10),
151,371,764 (celeba64) and 326,870,344 (celebahq256). The flow cells' outputs were
checked against NVAE's PairedCellAR (same weights, float64: max difference 6e-14).
"""
import argparse
import os

import pytest
import torch

from ncpfast.config import resolve_config
from ncpfast.models.factory import build_model

# NVAE AutoEncoder parameter counts of the README commands (measured as above).
NVAE_PARAMETERS = {
    "mnist": 33_363_134,
    "cifar10": 130_852_480,
    "celeba64": 153_281_364,
    "celebahq256": 330_798_664,
}


@pytest.mark.parametrize("preset", sorted(NVAE_PARAMETERS))
def test_preset_has_nvae_parameter_count(preset):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_model(resolve_config(preset).model)
    assert sum(p.numel() for p in model.parameters()) == NVAE_PARAMETERS[preset]


@pytest.mark.parametrize("mirror", [False, True])
def test_flow_cell_is_autoregressive_with_unit_diagonal(mirror):
    """Output element i depends only on elements before it in the cell's raster
    order (channels, then pixels) and on itself with slope 1: a shift flow, log det 0."""
    from ncpfast.models.nvae_flows import FlowCell

    torch.manual_seed(0)
    cell = FlowCell(2, mirror=mirror).double()
    for p in cell.parameters():
        p.data.normal_()
    z = torch.randn(1, 2, 3, 3, dtype=torch.double)
    jac = torch.autograd.functional.jacobian(lambda t: cell(t.view(1, 2, 3, 3)).flatten(), z.flatten())
    # Raster order: pixel (row-major, reversed when mirrored), then channel within a pixel.
    pixel = torch.arange(9).repeat(2)
    pixel = 8 - pixel if mirror else pixel
    order = pixel * 2 + torch.arange(2).repeat_interleave(9)
    later = order[None, :] > order[:, None]  # [output, input]: the input comes after the output
    assert jac[later].abs().max() == 0
    assert torch.allclose(torch.diagonal(jac), torch.ones(18, dtype=torch.double))


def test_num_nf_beyond_nvae_is_refused():
    from ncpfast.models import HierarchicalVAE, NVAEConfig

    with pytest.raises(ValueError, match="num_nf must be 0 to 2"):
        HierarchicalVAE(NVAEConfig(num_nf=3))


def test_generative_cell_convs_are_plain_as_in_nvae():
    """NVAE's inverted-residual convs carry no weight norm and no bias; its
    up-sampling skip conv has no bias."""
    from ncpfast.nn.cells import GenerativeCell

    cell = GenerativeCell(8, 4, upsample=True)
    layers = cell.layers()
    for conv in (layers.conv_in, layers.depthwise, layers.conv_out):
        assert conv.log_weight_norm is None and conv.bias is None
        assert torch.equal(conv.normalized_weight(), conv.weight)
    assert cell.skip.conv.bias is None and cell.skip.conv.log_weight_norm is not None


def test_flows_act_on_the_posterior_only():
    """With flows, z is the flows' output and log q(z) is the Normal's density at the
    pre-flow sample (unit Jacobian); the prior stays the group's Normal, so the NCP's
    r(z) reweights that Normal against the flowed aggregate posterior, and sampling
    from the prior never runs a flow."""
    from ncpfast.models import HierarchicalVAE, NVAEConfig

    torch.manual_seed(0)
    config = NVAEConfig(channels=4, num_preprocess_blocks=1, num_preprocess_cells=1, num_postprocess_blocks=1,
                        num_postprocess_cells=1, num_latent_scales=2, num_groups_per_scale=2, latent_channels=2,
                        num_cells_per_group_enc=1, num_cells_per_group_dec=1, image_size=16, num_nf=1)
    model = HierarchicalVAE(config).eval()
    for flow in model.flows:  # move the flows away from their near-identity start
        for p in flow.parameters():
            p.data.normal_()
    x = torch.rand(2, 1, 16, 16).bernoulli()
    _, groups = model(x)
    assert len(model.flows) == len(groups)
    for k, g in enumerate(groups):
        assert g.z0 is not None and not torch.allclose(g.z, g.z0)
        assert torch.allclose(g.z, model.flows[k](g.z0))
        expected = (g.posterior.log_prob(g.z0) - g.prior.log_prob(g.z)).flatten(1).sum(1)
        assert torch.allclose(g.kl(), expected) and torch.allclose(g.log_q_minus_log_p(), expected)
    assert model.sample_decoder_output(2).shape == (2, 1, 16, 16)


# --- NVAE's own outputs (python_tests/fixtures, made by scripts/make_nvae_fixture.py) ----------------

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def load_fixture(name):
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(os.path.join(FIXTURES, name), weights_only=True)


@pytest.mark.parametrize("name", ["nvae_mnist_nf1.pt", "nvae_cifar10_nf1.pt", "nvae_cifar10_5bit_nf1.pt"])
def test_imported_model_computes_what_nvae_computes(name, tmp_path, monkeypatch):
    from ncpfast.import_nvae import import_checkpoint
    from ncpfast.nn import distributions
    from ncpfast.trained_run import load_run

    fixture = load_fixture(name)
    path = tmp_path / "checkpoint.pt"
    torch.save(fixture["checkpoint"], path)
    import_checkpoint(str(path), str(tmp_path / "run"))
    _, model = load_run(str(tmp_path / "run"), torch.device("cpu"))
    model = model.double()
    ref = fixture["outputs"]
    noise = iter(ref["noise"])  # NVAE's posterior samples used this noise, group by group
    monkeypatch.setattr(distributions.Normal, "sample", lambda self, generator=None: self.mu + self.sigma * next(noise))
    with torch.no_grad():
        output, groups = model(ref["x"])
        recon = model.reconstruction_log_prob(output, ref["x"])
    tight = dict(rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(output, ref["logits"], **tight)
    for k, g in enumerate(groups):
        torch.testing.assert_close(g.posterior.mu, ref["q_mu"][k], **tight)
        torch.testing.assert_close(g.posterior.sigma, ref["q_sigma"][k], **tight)
        torch.testing.assert_close(g.prior.mu.expand_as(g.z), ref["p_mu"][k], **tight)
        torch.testing.assert_close(g.prior.sigma.expand_as(g.z), ref["p_sigma"][k], **tight)
    kl = torch.stack([g.kl() for g in groups], 1)
    torch.testing.assert_close(kl, ref["kl_all"], **tight)
    torch.testing.assert_close(recon, ref["recon_log_prob"], **tight)
    torch.testing.assert_close(-recon + kl.sum(1), ref["nelbo"], **tight)


@pytest.mark.parametrize("train_mode", [False, True])
def test_fused_cells_agree_with_eager_on_an_imported_nvae(tmp_path, train_mode):
    """The residual cells of the NVAE-equal model (plain inverted-residual convs) run
    through the fused kernels as through eager torch; the flow cells are eager either way."""
    from ncpfast.import_nvae import import_checkpoint
    from ncpfast.nn.cells import set_cell_kernels
    from ncpfast.trained_run import load_run

    fixture = load_fixture("nvae_cifar10_nf1.pt")
    torch.save(fixture["checkpoint"], tmp_path / "checkpoint.pt")
    import_checkpoint(str(tmp_path / "checkpoint.pt"), str(tmp_path / "run"))
    _, model = load_run(str(tmp_path / "run"), torch.device("cpu"))
    model.train(train_mode)
    x = fixture["outputs"]["x"].float().repeat(2, 1, 1, 1)
    outputs = []
    for kernels in ("torch", "fused"):
        set_cell_kernels(model, kernels)
        torch.manual_seed(0)
        with torch.no_grad():
            output, groups = model(x)
        outputs.append((output, torch.stack([g.kl() for g in groups], 1)))
    torch.testing.assert_close(outputs[1][0], outputs[0][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outputs[1][1], outputs[0][1], rtol=1e-4, atol=1e-3)
