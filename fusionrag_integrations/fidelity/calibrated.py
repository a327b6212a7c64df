"""The guard's shipped calibration: written by benchmarks/guard.py from the dev sets (see its
`source`); an engine refits on its own shadow samples once it has enough (guard.py)."""

from __future__ import annotations

from .predictor import DivergencePredictor

SHIPPED = {
    "features": [
        "entropy",
        "margin",
        "missed_attention",
        "residual_deviation",
        "recompute_share",
        "chunk_share",
        "standalone",
    ],
    "mean": [
        3.608386,
        0.186318,
        0.050053,
        -2.486201,
        0.225015,
        0.842164,
        1.0,
    ],
    "scale": [
        0.758513,
        0.167627,
        0.014629,
        0.406371,
        0.07508,
        0.067191,
        1.0,
    ],
    "weights": [
        -0.595505,
        -0.024754,
        -0.029827,
        0.422652,
        -0.087562,
        -0.622218,
        0.0,
    ],
    "bias": 0.032434,
    "label": 0.9,
    "samples": 300,
    "source": "SmolLM2-135M fp32: MuSiQue dev (3 passages) + synthetic, ratios [0.15, 0.3]",
}


def shipped_predictor() -> DivergencePredictor:
    return DivergencePredictor.from_dict(SHIPPED)
