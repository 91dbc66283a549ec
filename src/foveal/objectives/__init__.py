"""Training objectives: which losses a run trains (`train.objective`), computed from the model's predictions. One
file per objective, each registered by name; the imports below register them."""

from foveal.objectives import caption, joint, recon  # noqa: E402, F401  (registration)
from foveal.objectives.base import OBJECTIVES, Objective, Scores, build_objective, fine_weights, score, score_passes

__all__ = ["OBJECTIVES", "Objective", "Scores", "build_objective", "fine_weights", "score", "score_passes"]
