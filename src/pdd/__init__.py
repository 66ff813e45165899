"""PDD: Manifold-Prior Diverse Distillation for unsupervised medical image anomaly detection."""

from __future__ import annotations

__version__ = "0.1.0"
