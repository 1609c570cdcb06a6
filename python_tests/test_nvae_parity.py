"""Parity of the hierarchical VAE with NVAE (NVlabs/NVAE): parameter counts.

The reference numbers were measured by building NVAE's own AutoEncoder (NVlabs/NVAE
at its published HEAD, on the CPU/meta device, its `.cuda()` calls stubbed from the
outside) with the arguments of each training command in NVAE's README
(`--use_se --res_dist`, arch_instance res_mbconv) and summing `p.numel()` over
`model.parameters()`. The README's CIFAR-10, CelebA-64 and CelebA-HQ-256 commands use
`--num_nf 1, 1, 2`; with those flows NVAE's models have 130,852,480 (cifar10) and
153,281,364 (celeba64) parameters. ncpfast has no flow cells yet, so the test pins the
same commands with `--num_nf 0`.
"""
import pytest
import torch

from ncpfast.models.factory import build_model
from ncpfast.training.config import resolve_config

# NVAE AutoEncoder parameter counts, README commands with --num_nf 0.
NVAE_PARAMETERS_NUM_NF_0 = {
    "mnist": 33_363_134,
    "cifar10": 129_215_680,
    "celeba64": 151_371_764,
    "celebahq256": 326_870_344,
}


@pytest.mark.parametrize("preset", sorted(NVAE_PARAMETERS_NUM_NF_0))
def test_preset_has_nvae_parameter_count(preset):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_model(resolve_config(preset, {}))
    assert sum(p.numel() for p in model.parameters()) == NVAE_PARAMETERS_NUM_NF_0[preset]


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
