"""The model a config's model section names: the one place that knows every model class."""
import dataclasses

from ..nn.kernel_choice import set_cell_kernels
from .base import LatentVAE
from .nvae import HierarchicalVAE, NVAEConfig
from .single import ConvVAE, MLPVAE


def hierarchical_config(model) -> NVAEConfig:
    """The NVAEConfig of a model section of kind nvae (ncpfast.config.ModelConfig):
    its shared fields and its hierarchy. The section's likelihood is the model's output."""
    return NVAEConfig(in_channels=model.in_channels, image_size=model.image_size, output=model.likelihood,
                      num_mix=model.num_mix, channels=model.channels, **dataclasses.asdict(model.nvae))


def build_model(model) -> LatentVAE:
    """The model a config's model section (ncpfast.config.ModelConfig) names: kind
    nvae, mlp or conv."""
    if model.kind == "nvae":
        return set_cell_kernels(HierarchicalVAE(hierarchical_config(model)), model.kernels)
    if model.kind == "mlp":
        return MLPVAE(latent_dim=model.latent_dim, hidden=model.mlp.hidden_units)
    if model.kind == "conv":
        return ConvVAE(image_size=model.image_size, latent_dim=model.latent_dim, num_mix=model.num_mix,
                       width=model.channels, in_channels=model.in_channels, output=model.likelihood)
    raise ValueError(f"unknown model kind {model.kind!r}; expected nvae, mlp or conv")
