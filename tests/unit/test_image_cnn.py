"""The optional CNN image embedding: local weights only, fixed shapes, deterministic, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import ConfigError

torch = pytest.importorskip("torch")
PIL = pytest.importorskip("PIL.Image")

from pipeline.features.images import CNN_DIM, image_chunk, image_features, small_cnn  # noqa: E402


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "cnn.pt"
    torch.save(small_cnn().state_dict(), path)
    return path


@pytest.fixture
def images(tmp_path: Path) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    rows = []
    for i in range(5):
        arr = rng.integers(0, 256, size=(40 + 7 * i, 30 + 5 * i, 3), dtype=np.uint8)
        PIL.fromarray(arr).save(tmp_path / f"{i}.png")
        rows.append({"item_id": i + 1, "image_path": f"{i}.png"})
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    rows.append({"item_id": 99, "image_path": "broken.jpg"})
    return pd.DataFrame(rows)


def test_embeddings_have_fixed_shape_unit_length_and_repeat(weights: Path, images: pd.DataFrame,
                                                            tmp_path: Path) -> None:
    out = image_chunk(images, str(tmp_path), str(weights))
    ok = out[out["has_image"]]
    assert len(ok) == 5 and out.loc[~out["has_image"], "img_embedding"].isna().all()
    z = np.stack(ok["img_embedding"].to_numpy())
    assert z.shape == (5, CNN_DIM) and np.isfinite(z).all()
    assert np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(z[0], z[1])  # different images, different vectors
    again = np.stack(image_chunk(images, str(tmp_path), str(weights)).loc[ok.index, "img_embedding"].to_numpy())
    np.testing.assert_array_equal(z, again)
    # Through the chunked entry point (no cluster): the same vectors up to float rounding (other batches).
    viaf = image_features(images, None, root=tmp_path, chunk=2, model_path=weights).set_index("item_id")
    np.testing.assert_allclose(np.stack(viaf.loc[ok["item_id"], "img_embedding"].to_numpy()), z, atol=1e-6)


def test_other_embedding_sizes_follow_the_weights(tmp_path: Path, images: pd.DataFrame) -> None:
    torch.save(small_cnn(dim=16).state_dict(), tmp_path / "w16.pt")
    out = image_chunk(images.iloc[:2], str(tmp_path), str(tmp_path / "w16.pt"))
    assert {len(v) for v in out["img_embedding"]} == {16}


def test_without_a_model_there_is_no_embedding_column(images: pd.DataFrame, tmp_path: Path) -> None:
    assert "img_embedding" not in image_chunk(images, str(tmp_path)).columns


def test_a_missing_or_bad_weights_file_is_a_clear_config_error(images: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as err:
        image_features(images, None, root=tmp_path, model_path=tmp_path / "nope.pt")
    assert "RERANK_IMAGE_MODEL_PATH" in str(err.value)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="cannot load"):
        image_chunk(images.iloc[:1], str(tmp_path), str(tmp_path / "junk.pt"))
    torch.save({"conv.weight": torch.zeros(2, 3, 3, 3)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="do not fit"):
        image_chunk(images.iloc[:1], str(tmp_path), str(tmp_path / "other.pt"))
