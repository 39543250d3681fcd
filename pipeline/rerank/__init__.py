"""Re-rank: score fusion, business rules, diversity (MMR, caps, exploration), reasons and A/B variants."""

from pipeline.rerank.config import (
    RerankConfig,
    Variant,
    assign_variants,
    caps_every_seen_item,
    parse_variants,
    repurchasable_categories,
    repurchase_windows_in_play,
    split_by_arm,
)
from pipeline.rerank.diversity import load_item_embeddings, mmr_select
from pipeline.rerank.lists import FUSIONS, OUTPUT_COLUMNS, fill_empty_lists, finalize_lists, fuse, reason_text
from pipeline.rerank.rules import apply_rules, load_repurchase_windows, load_rules

__all__ = ["FUSIONS", "OUTPUT_COLUMNS", "RerankConfig", "Variant", "apply_rules", "assign_variants",
           "caps_every_seen_item", "fill_empty_lists", "finalize_lists", "fuse", "load_item_embeddings",
           "load_repurchase_windows", "load_rules", "mmr_select", "parse_variants", "reason_text",
           "repurchasable_categories", "repurchase_windows_in_play", "split_by_arm"]
