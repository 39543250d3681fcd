"""Item and user features (Dask fit -> finalize -> transform)."""

from pipeline.features.items import build_item_features, decayed_weight, top_category

__all__ = ["build_item_features", "decayed_weight", "top_category"]
