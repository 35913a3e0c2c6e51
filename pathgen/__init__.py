"""pathgen: synthesize gene expression from whole-slide histopathology.

Fused co-attention and diffusion kernels (``pathgen.ops``, compiled into ``pathgen._C``
with pure-PyTorch twins as fallback), slide I/O, cohort data, the PathGen generator, the
multimodal predictor and their evaluation, behind one ``pathgen`` command.
"""

__version__ = "0.1.0"
