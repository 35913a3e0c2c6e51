"""Figures and the run report: co-attention heatmaps on slide thumbnails (``heatmaps``), per-patch
predictor maps (``distributed``), attention files (``attention``) and the self-contained HTML report
(``html``)."""
