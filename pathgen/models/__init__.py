"""Models: the PathGen generator, the multimodal predictor and their losses (``losses``)."""
