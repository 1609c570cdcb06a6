"""Reading NVAE's (NVlabs/NVAE) checkpoints: its training arguments as an ncpfast
config, and its state dict's names and shapes as HierarchicalVAE's.

NVAE names its modules by where they sit in its towers (enc_tower holds the encoder
cells and the combiners interleaved, dec_tower the decoder cells, combiners and up
cells); the map below walks the same towers in the order NVAE builds them and pairs
each NVAE name with the ncpfast module that computes the same thing.
"""
from collections.abc import Iterator

import torch

from .nvae import HierarchicalVAE, NVAEConfig

# NVAE's published architecture (its train.py default and the only one its README uses).
SUPPORTED_ARCH = "res_mbconv"
# What NVAE's own evaluate.py fills in for checkpoints older than these arguments.
NVAE_ARG_DEFAULTS = {"ada_groups": False, "min_groups_per_scale": 1, "num_mixture_dec": 10}
# NVAE's dataset names -> (ncpfast data set, channels, image side).
NVAE_DATASETS = {
    "mnist": ("mnist", 1, 32),
    "cifar10": ("cifar10", 3, 32),
    "celeba_64": ("celeba64", 3, 64),
    "celeba_256": ("celebahq256", 3, 256),
    "ffhq": ("ffhq256", 3, 256),
}
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def nvae_model_config(args) -> tuple[NVAEConfig, str]:
    """(NVAEConfig, ncpfast data set) of NVAE's training arguments (an argparse
    Namespace); ValueError naming the argument when ncpfast has no equal model."""
    values = {**NVAE_ARG_DEFAULTS, **vars(args)}
    arch = values.get("arch_instance", SUPPORTED_ARCH)
    if arch != SUPPORTED_ARCH:
        raise ValueError(f"arch_instance {arch!r} is not supported; ncpfast has NVAE's {SUPPORTED_ARCH!r}")
    dataset = values.get("dataset")
    if dataset not in NVAE_DATASETS:
        raise ValueError(f"dataset {dataset!r} is not supported; expected one of {', '.join(NVAE_DATASETS)}")
    for flag in ("use_se", "res_dist"):
        if not values.get(flag, False):
            raise ValueError(f"{flag} is off in this checkpoint; ncpfast has NVAE's model with --use_se --res_dist")
    if values["num_channels_enc"] != values["num_channels_dec"]:
        raise ValueError("num_channels_enc and num_channels_dec differ; ncpfast's model has one width (channels)")
    name, in_channels, image_size = NVAE_DATASETS[dataset]
    try:
        config = NVAEConfig(
            in_channels=in_channels, image_size=image_size,
            output="bernoulli" if in_channels == 1 else "logistic_mixture", num_mix=values["num_mixture_dec"],
            channels=values["num_channels_enc"], num_preprocess_blocks=values["num_preprocess_blocks"],
            num_preprocess_cells=values["num_preprocess_cells"],
            num_postprocess_blocks=values["num_postprocess_blocks"],
            num_postprocess_cells=values["num_postprocess_cells"], num_latent_scales=values["num_latent_scales"],
            num_groups_per_scale=values["num_groups_per_scale"], adaptive_groups=bool(values["ada_groups"]),
            min_groups_per_scale=values["min_groups_per_scale"], latent_channels=values["num_latent_per_group"],
            num_cells_per_group_enc=values["num_cell_per_cond_enc"],
            num_cells_per_group_dec=values["num_cell_per_cond_dec"], num_nf=values.get("num_nf", 0),
            num_x_bits=values.get("num_x_bits", 8),
            crop_border=2 if in_channels == 1 else 0)
    except KeyError as missing:
        raise ValueError(f"the checkpoint's args lack {missing}, an argument of NVAE's train.py") from None
    return config, name


def _encoder_cell(nvae: str, ours: str, downsample: bool) -> Iterator[tuple[str, str]]:
    for i, (bn, conv) in enumerate(((0, 2), (3, 5))):
        yield from ((f"{nvae}._ops.{i}.bn_act.{k}", f"{ours}.ops.{bn}.{k}") for k in BN_KEYS)
        yield from ((f"{nvae}._ops.{i}.conv_0.{k}", f"{ours}.ops.{conv}.{k}")
                    for k in ("weight", "bias", "log_weight_norm"))
    yield from _se(nvae, ours)
    if downsample:
        for j in range(4):
            yield from ((f"{nvae}.skip.conv_{j + 1}.{k}", f"{ours}.skip.convs.{j}.{k}")
                        for k in ("weight", "bias", "log_weight_norm"))


def _generative_cell(nvae: str, ours: str, upsample: bool) -> Iterator[tuple[str, str]]:
    o = 1 if upsample else 0  # NVAE's Sequential has the upsample layer only in up cells
    base = f"{nvae}._ops.0.conv"
    # NVAE wraps its plain batch norms (first and last of the cell) in a module with a `bn` child;
    # the BN + Swish layers after the first two convs are batch norms themselves.
    yield from ((f"{base}.{o}.bn.{k}", f"{ours}.ops.1.{k}") for k in BN_KEYS)
    yield f"{base}.{o + 1}.conv.0.weight", f"{ours}.ops.2.weight"
    yield from ((f"{base}.{o + 1}.conv.1.{k}", f"{ours}.ops.3.{k}") for k in BN_KEYS)
    yield f"{base}.{o + 2}.conv.0.weight", f"{ours}.ops.5.weight"
    yield from ((f"{base}.{o + 2}.conv.1.{k}", f"{ours}.ops.6.{k}") for k in BN_KEYS)
    yield f"{base}.{o + 3}.weight", f"{ours}.ops.8.weight"
    yield from ((f"{base}.{o + 4}.bn.{k}", f"{ours}.ops.9.{k}") for k in BN_KEYS)
    yield from _se(nvae, ours)
    if upsample:
        yield from ((f"{nvae}.skip.1.{k}", f"{ours}.skip.conv.{k}") for k in ("weight", "log_weight_norm"))


def _se(nvae: str, ours: str) -> Iterator[tuple[str, str]]:
    for i, fc in ((0, "fc1"), (2, "fc2")):
        yield from ((f"{nvae}.se.se.{i}.{k}", f"{ours}.se.{fc}.{k}") for k in ("weight", "bias"))


def _conv(nvae: str, ours: str, bias: bool = True) -> Iterator[tuple[str, str]]:
    yield from ((f"{nvae}.{k}", f"{ours}.{k}") for k in (("weight", "bias", "log_weight_norm") if bias
                                                       else ("weight", "log_weight_norm")))


def _flow(nvae: str, ours: str) -> Iterator[tuple[str, str]]:
    for cell, order in (("cell1", "forward_order"), ("cell2", "reverse_order")):
        yield from _conv(f"{nvae}.{cell}.conv.convz.0", f"{ours}.{order}.conv_in", bias=False)
        yield from _conv(f"{nvae}.{cell}.conv.convz.2", f"{ours}.{order}.depthwise", bias=False)
        yield from _conv(f"{nvae}.{cell}.mu.conv_0", f"{ours}.{order}.shift")


def key_pairs(model: HierarchicalVAE) -> Iterator[tuple[str, str]]:
    """(NVAE name, ncpfast name) of every parameter and buffer, in NVAE's build order."""
    c = model.config
    yield "prior_ftr0", "decoder_input"
    yield from _conv("stem", "stem")
    i = 0
    for _ in range(c.num_preprocess_blocks):
        for cell in range(c.num_preprocess_cells):
            yield from _encoder_cell(f"pre_process.{i}", f"preprocess.{i}", cell == c.num_preprocess_cells - 1)
            i += 1
    # NVAE's enc_tower: per group its cells then a combiner (none after the last group),
    # a down cell between scales. Its combiners are our posterior_combiners in reverse.
    n_groups = len(model.group_scales)
    t, k = 0, 0
    for s in range(c.num_latent_scales):
        for _ in range(model.groups[s]):
            for j in range(c.num_cells_per_group_enc):
                yield from _encoder_cell(f"enc_tower.{t}", f"encoder_groups.{k}.{j}", False)
                t += 1
            if k < n_groups - 1:
                yield from _conv(f"enc_tower.{t}.conv", f"posterior_combiners.{n_groups - 1 - k}.conv")
                t += 1
            k += 1
        if s < c.num_latent_scales - 1:
            yield from _encoder_cell(f"enc_tower.{t}", f"encoder_down.{s}", True)
            t += 1
    yield from _conv("enc0.1", "encoder_top.1")
    for k in range(n_groups):
        yield from _conv(f"enc_sampler.{k}", f"posterior_heads.{k}")
        for n in range(c.num_nf):
            yield from _flow(f"nf_cells.{k * c.num_nf + n}", f"flows.{k * c.num_nf + n}")
        if k:
            yield from _conv(f"dec_sampler.{k - 1}.1", f"prior_heads.{k}.1")
    t = 0
    for k in range(len(model.group_scales)):
        if k:
            for j in range(c.num_cells_per_group_dec):
                yield from _generative_cell(f"dec_tower.{t}", f"decoder_groups.{k}.{j}", False)
                t += 1
        yield from _conv(f"dec_tower.{t}.conv", f"decoder_combiners.{k}.conv")
        t += 1
        if str(k) in model.decoder_up:
            yield from _generative_cell(f"dec_tower.{t}", f"decoder_up.{k}", True)
            t += 1
    i = 0
    for _ in range(c.num_postprocess_blocks):
        for cell in range(c.num_postprocess_cells):
            yield from _generative_cell(f"post_process.{i}", f"postprocess.{i}", cell == 0)
            i += 1
    yield from _conv("image_conditional.1", "output_head.1")


def convert_state_dict(nvae_state: dict, model: HierarchicalVAE) -> dict:
    """NVAE's state dict as model's; ValueError naming unknown, missing or misshapen keys."""
    ours = model.state_dict()
    pairs = dict(key_pairs(model))
    # NVAE's convs without weight norm store their weight a second time as `weight_normalized`
    # (an attribute that aliases the parameter): the same tensor, skipped.
    aliases = {k for k in nvae_state if k.endswith(".weight_normalized") and k[:-len("_normalized")] in pairs}
    unknown = sorted(set(nvae_state) - set(pairs) - aliases)
    missing = sorted(set(pairs) - set(nvae_state))
    if unknown or missing:
        raise ValueError("the NVAE state_dict does not match the architecture its args describe: "
                         f"{len(unknown)} unknown keys {unknown[:5]}, {len(missing)} missing keys {missing[:5]}")
    converted = {}
    for nvae_key, our_key in pairs.items():
        value = nvae_state[nvae_key]
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{nvae_key} in the NVAE state_dict is a {type(value).__name__}, expected a tensor")
        target = ours[our_key]
        if value.numel() != target.numel():
            raise ValueError(f"{nvae_key} has shape {list(value.shape)}, expected {list(target.shape)} "
                             f"(for {our_key})")
        # Only layouts differ: NVAE keeps log_weight_norm as [C, 1, 1, 1] and prior_ftr0 without a batch axis.
        converted[our_key] = value.reshape(target.shape).to(target.dtype)
    left = set(ours) - set(converted)
    if left:  # the map must cover the model: a gap here is a bug in key_pairs, not in the checkpoint
        raise ValueError(f"ncpfast keys with no NVAE counterpart: {sorted(left)[:5]}")
    return converted
