"""The model a training config names: the one place that knows every model class."""
from ..nn.kernel_choice import set_cell_kernels
from .base import LatentVAE
from .nvae import HierarchicalVAE, NVAEConfig
from .single import ConvVAE, MLPVAE


def build_model(config) -> LatentVAE:
    """The model a training config names (config.model: nvae, mlp or conv)."""
    if config.model == "nvae":
        return set_cell_kernels(HierarchicalVAE(NVAEConfig.from_train_config(config)),
                                getattr(config, "kernels", "auto"))
    if config.model == "mlp":
        return MLPVAE(latent_dim=config.latent_dim, hidden=config.hidden_units)
    if config.model == "conv":
        return ConvVAE(image_size=config.image_size, latent_dim=config.latent_dim, num_mix=config.num_mix,
                       width=config.channels, in_channels=config.in_channels, output=config.output)
    raise ValueError(f"unknown model {config.model!r}; expected nvae, mlp or conv")
