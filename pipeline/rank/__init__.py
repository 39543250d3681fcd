"""The deep ranker: point-in-time training data, a sequential behaviour model, training, registry and gate,
batch scoring. Torch is imported by the submodules only, so importing the package stays cheap."""

from __future__ import annotations

__all__ = ["data", "features", "model", "net", "registry", "score", "stage"]
