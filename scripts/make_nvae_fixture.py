"""Makes python_tests/fixtures/nvae_*.pt: small NVAE models (NVlabs/NVAE's own code)
with a flow cell, saved in NVAE's checkpoint format, and what NVAE computes for fixed
inputs, for test_nvae_parity.py to match through ncpfast's importer.

    python scripts/make_nvae_fixture.py PATH/TO/NVAE [--out python_tests/fixtures]

NVAE is imported from the path given (its code is not part of ncpfast: its licence is
not ours). It is made to run on the CPU from the outside: `.cuda()` becomes a no-op and
a missing tensorboardX is stubbed. Randomness is pinned by replacing NVAE's Normal
sampling with noise drawn here and stored in the fixture; the model is in eval mode
(BN running statistics, set away from their defaults) and computes in float64.
"""
import argparse
import os
import sys
import types

import torch

SMALL_ARGS = dict(num_x_bits=8, num_mixture_dec=3, ada_groups=True, min_groups_per_scale=1, use_se=True,
                  res_dist=True, arch_instance="res_mbconv", num_nf=1, num_latent_scales=2, num_groups_per_scale=2,
                  num_postprocess_cells=2, num_preprocess_cells=2, num_cell_per_cond_enc=1, num_cell_per_cond_dec=1,
                  num_latent_per_group=3, num_preprocess_blocks=1, num_postprocess_blocks=1, num_channels_enc=4,
                  num_channels_dec=4)


def import_nvae(path):
    sys.path.insert(0, os.path.abspath(path))
    if "tensorboardX" not in sys.modules:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            stub = types.ModuleType("tensorboardX")
            stub.SummaryWriter = object
            sys.modules["tensorboardX"] = stub
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    import distributions
    import model
    import utils
    from thirdparty.inplaced_sync_batchnorm import SyncBatchNormSwish

    def eval_bn_swish(self, x):  # its CUDA-only forward, in eval mode: BN with running statistics, then Swish
        if self.training:
            raise RuntimeError("the fixture runs NVAE in eval mode only")
        y = torch.nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False,
                                           0.0, self.eps)
        return y * torch.sigmoid(y)

    SyncBatchNormSwish.forward = eval_bn_swish
    return model, distributions, utils


def randomise(net, generator):
    """Random weights at a modest scale and BN statistics away from (0, 1)."""
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * (0.3 if p.dim() > 1 else 0.2))
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)


def make(nvae_path, dataset, out_path, seed, **changes):
    model_module, distributions, utils = import_nvae(nvae_path)
    args = argparse.Namespace(dataset=dataset, **{**SMALL_ARGS, **changes})
    arch = utils.get_arch_cells(args.arch_instance)
    generator = torch.Generator().manual_seed(seed)
    net = model_module.AutoEncoder(args, None, arch)
    randomise(net, generator)
    state_dict = {k: v.clone() for k, v in net.state_dict().items()}
    net = net.double().eval()

    channels = 1 if dataset == "mnist" else 3
    batch = 2 if dataset == "mnist" else 1  # the mixture logits of a colour image are 30 x 32 x 32: keep the file small
    x = torch.rand(batch, channels, 32, 32, generator=generator, dtype=torch.float64)
    if dataset == "mnist":
        x = x.bernoulli(generator=generator)
    else:
        x = torch.round(x * 255) / 255
    num_groups = sum(net.groups_per_scale)
    noise = [None] * num_groups
    calls = []
    original_sample = distributions.Normal.sample
    original_normal = model_module.Normal
    made = []  # every Normal NVAE's forward builds, in order: group k's posterior, then its prior

    class RecordedNormal(original_normal):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    model_module.Normal = RecordedNormal

    def pinned_sample(self):  # the k-th posterior sample of the forward pass uses the stored noise
        k = len(calls)
        calls.append(k)
        eps = torch.randn(self.mu.shape, generator=generator, dtype=self.mu.dtype)
        noise[k] = eps
        return eps * self.sigma + self.mu, eps

    distributions.Normal.sample = pinned_sample
    model_module.Normal.sample = pinned_sample
    try:
        with torch.no_grad():
            # NVAE's train.py quantises the 8-bit images to num_x_bits before the model sees them;
            # the fixture stores the 8-bit x (what ncpfast's data pipeline hands the model).
            x_model = utils.pre_process(x.clone(), args.num_x_bits)
            logits, log_q, log_p, kl_all, kl_diag = net(x_model)
            decoder = net.decoder_output(logits)
            recon = -utils.reconstruction_loss(decoder, x_model, crop=net.crop_output)
    finally:
        distributions.Normal.sample = original_sample
        model_module.Normal = original_normal
    if len(calls) != num_groups:
        raise RuntimeError(f"expected {num_groups} posterior samples, NVAE drew {len(calls)}")
    if len(made) != 2 * num_groups:
        raise RuntimeError(f"expected a posterior and a prior per group, NVAE built {len(made)} Normals")
    posteriors, priors = made[0::2], made[1::2]
    checkpoint = {"epoch": 1, "state_dict": state_dict, "optimizer": {}, "global_step": 0, "args": args,
                  "arch_instance": arch, "scheduler": {}, "grad_scalar": {}}
    outputs = {"x": x, "noise": noise, "logits": logits, "log_q": log_q, "log_p": log_p,
               "kl_all": torch.stack(kl_all, 1), "recon_log_prob": recon,
               "nelbo": -recon + torch.stack(kl_all, 1).sum(1),
               "q_mu": [q.mu for q in posteriors], "q_sigma": [q.sigma for q in posteriors],
               "p_mu": [p.mu for p in priors], "p_sigma": [p.sigma for p in priors]}
    # The legacy (non-zip) format: no per-tensor zip records, a third smaller for these many small tensors.
    torch.save({"checkpoint": checkpoint, "outputs": outputs}, out_path, _use_new_zipfile_serialization=False)
    print(f"wrote {out_path} ({os.path.getsize(out_path)} bytes)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("nvae_path", help="a checkout of NVlabs/NVAE")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "python_tests", "fixtures"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    make(args.nvae_path, "mnist", os.path.join(args.out, "nvae_mnist_nf1.pt"), seed=1)
    make(args.nvae_path, "cifar10", os.path.join(args.out, "nvae_cifar10_nf1.pt"), seed=2)
    # 5-bit images, as NVAE's CelebA-HQ-256 and FFHQ models read them (at 32x32 to stay small).
    make(args.nvae_path, "cifar10", os.path.join(args.out, "nvae_cifar10_5bit_nf1.pt"), seed=3, num_x_bits=5,
         num_mixture_dec=2)


if __name__ == "__main__":
    main()
