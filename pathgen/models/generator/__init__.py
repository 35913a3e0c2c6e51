"""PathGen generator: conditional diffusion over the gene families, conditioned on the patch bag."""
from pathgen.models.generator.config import PRESETS, GeneratorConfig, make_config
from pathgen.models.generator.diffusion import family_loss, sample, training_loss
from pathgen.models.generator.model import PathGenDenoiser, SlideContext, timestep_embedding

__all__ = ["GeneratorConfig", "PRESETS", "make_config", "PathGenDenoiser", "SlideContext", "timestep_embedding",
           "family_loss", "training_loss", "sample"]
