"""Item, user, text and image features (Dask fit -> finalize -> transform)."""

from pipeline.features.items import build_item_features, decayed_weight, top_category
from pipeline.features.tables import write_feature_tables
from pipeline.features.text import build_item_embeddings
from pipeline.features.users import build_user_features

__all__ = ["build_item_embeddings", "build_item_features", "build_user_features", "decayed_weight",
           "top_category", "write_feature_tables"]
