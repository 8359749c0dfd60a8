"""Generators and GAN Slimming (Wang, Gui et al., ECCV 2020) on the project's machinery: a
class-conditional DCGAN-style generator (models), LSGAN teacher and GS student training (gs),
cutting the pruned channels (slim) and quality without downloaded networks (quality)."""
from atmc_tf.gan.gs import GANTrainer
from atmc_tf.gan.models import (channel_groups, classifier, discriminator, generator, make_code, prunable_bns,
                                sample_codes)
from atmc_tf.gan.quality import FD_NAMES, frechet_distance, quality, sample_grid
from atmc_tf.gan.slim import channel_mac_model, cut_generator, live_channels, silence_pruned

__all__ = [n for n in dir() if not n.startswith("_")]
