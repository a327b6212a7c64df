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
        3.573718,
        0.188779,
        0.04414,
        -2.524969,
        0.266682,
        0.842164,
        1.0,
    ],
    "scale": [
        0.756341,
        0.169421,
        0.01642,
        0.417748,
        0.10282,
        0.067153,
        1.0,
    ],
    "weights": [
        -0.577727,
        -0.080274,
        -0.032893,
        0.539259,
        -0.091833,
        -0.56873,
        0.0,
    ],
    "bias": -0.003083,
    "label": 0.9,
    "samples": 450,
    "source": "SmolLM2-135M fp32: MuSiQue dev (3 passages) + synthetic, ratios [0.15, 0.25, 0.4]",
}


def shipped_predictor() -> DivergencePredictor:
    return DivergencePredictor.from_dict(SHIPPED)
