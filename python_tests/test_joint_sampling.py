"""The joint samplers target p_NCP = (1/Z) prod_k r_k p_k, the density the NLL
scores; the group-wise samplers normalise each group on its own. A two-group
toy where the two differ in closed form tells them apart."""
import pytest
import torch
import torch.nn as nn

from ncpfast.models.base import LatentVAE
from ncpfast.ncp.joint_sampling import decode_latents, joint_langevin_latents, joint_sir_latents
from ncpfast.nn.distributions import Normal

SLOPE = 0.6  # log r_2(z_2 | z_1) = SLOPE * z_2; r_1 = 1


class TwoGroupToy(LatentVAE):
    """z_1 ~ N(0, 1), z_2 | z_1 ~ N(z_1, 1); the "image" is (z_1, z_2).

    With log r_2 = a z_2: Z_2(z_1) = exp(a z_1 + a^2 / 2) depends on z_1, and
    p_NCP(z_1, z_2) = N(z_1; a, 1) N(z_2; z_1 + a, 1) (in the noise: eps_1 and
    eps_2 both N(a, 1)), while the group-wise target keeps z_1 ~ N(0, 1)."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)

    def sample_decoder_output(self, num_samples, temperature=1.0, intercept=None, generator=None, decode=True):
        zeros = torch.zeros(num_samples, 1)
        prior = Normal.from_mean_std(zeros, torch.full_like(zeros, temperature))
        z1 = prior.sample(generator)
        if intercept is not None:
            z1 = intercept(0, z1, None, prior)
        prior2 = Normal.from_mean_std(z1, torch.full_like(z1, temperature))
        z2 = prior2.sample(generator)
        if intercept is not None:
            z2 = intercept(1, z2, z1, prior2)
        return torch.cat([z1, z2], dim=1) if decode else None

    def mean_image(self, decoder_output):
        return decoder_output


def toy_log_ratio(k, z, context):
    return SLOPE * z.flatten(1).sum(1) if k == 1 else torch.zeros(z.shape[0])


def test_joint_sir_targets_the_scored_density():
    vae = TwoGroupToy()
    g = torch.Generator().manual_seed(0)
    z1, z2 = joint_sir_latents(vae, toy_log_ratio, 4000, 200, generator=g)
    # SIR with M = 200 on weights of log-variance a^2 * 2: close to the target.
    assert abs(float(z1.mean()) - SLOPE) < 0.06
    assert abs(float((z2 - z1).mean()) - SLOPE) < 0.06
    assert abs(float(z1.var()) - 1.0) < 0.1


def test_joint_sir_with_one_proposal_is_the_base_prior():
    vae = TwoGroupToy()
    z1, z2 = joint_sir_latents(vae, toy_log_ratio, 4000, 1, generator=torch.Generator().manual_seed(1))
    assert abs(float(z1.mean())) < 0.06 and abs(float((z2 - z1).mean())) < 0.06


def test_joint_langevin_targets_the_scored_density():
    vae = TwoGroupToy()
    g = torch.Generator().manual_seed(2)
    z1, z2 = joint_langevin_latents(vae, toy_log_ratio, 4000, steps=300, step_size=0.05, generator=g)
    # In the noise eps the target is N(a, 1) per coordinate; the unadjusted
    # chain's stationary variance is 1 / (1 - eta / 4) (about 1.3% high).
    assert abs(float(z1.mean()) - SLOPE) < 0.06
    assert abs(float((z2 - z1).mean()) - SLOPE) < 0.06
    assert abs(float(z1.var()) - 1.0) < 0.1


def test_joint_samplers_are_reproducible_and_decode():
    vae = TwoGroupToy()
    for sampler, kwargs in ((joint_sir_latents, dict(num_proposals=5)),
                            (joint_langevin_latents, dict(steps=3, step_size=0.1))):
        a = sampler(vae, toy_log_ratio, 7, generator=torch.Generator().manual_seed(3), **kwargs)
        b = sampler(vae, toy_log_ratio, 7, generator=torch.Generator().manual_seed(3), **kwargs)
        c = sampler(vae, toy_log_ratio, 7, generator=torch.Generator().manual_seed(4), **kwargs)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert not torch.equal(a[0], c[0])
        images = decode_latents(vae, a)
        assert torch.equal(images, torch.cat(a, dim=1))


def test_joint_sir_chunks_do_not_change_the_distribution_contract():
    vae = TwoGroupToy()
    small = joint_sir_latents(vae, toy_log_ratio, 9, 4, generator=torch.Generator().manual_seed(5),
                              max_proposals_per_pass=8)
    assert [z.shape for z in small] == [(9, 1), (9, 1)]


def test_joint_samplers_reject_bad_arguments():
    vae = TwoGroupToy()
    with pytest.raises(ValueError, match="num_proposals"):
        joint_sir_latents(vae, toy_log_ratio, 3, 0)
    with pytest.raises(ValueError, match="step_size"):
        joint_langevin_latents(vae, toy_log_ratio, 3, 2, 0.0)
