"""Grade + discrete-time survival predictors: MCAT-style multimodal (slide + expression through
genomic-guided co-attention), slide-only gated ABMIL and expression-only SNN, sharing one config,
one output type and one weighted objective."""
from pathgen.models.predictor.config import PredictorConfig
from pathgen.models.predictor.expression_snn import ExpressionSNN
from pathgen.models.predictor.factory import build_predictor, model_inputs
from pathgen.models.predictor.output import PredictorOutput, predictor_loss
from pathgen.models.predictor.slide_abmil import SlideABMIL

__all__ = ["PredictorConfig", "PredictorOutput", "predictor_loss", "build_predictor", "model_inputs",
           "ExpressionSNN", "SlideABMIL", "MultimodalPredictor"]


def __getattr__(name: str):
    if name == "MultimodalPredictor":  # imported lazily: it needs pathgen.nn (the co-attention layer)
        from pathgen.models.predictor.multimodal import MultimodalPredictor
        return MultimodalPredictor
    raise AttributeError(f"module 'pathgen.models.predictor' has no attribute {name!r}")
