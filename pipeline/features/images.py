"""Image features of items with an ``image_path``: colour histogram, mean colour, perceptual hash (Pillow).

:func:`image_row` is the pure per-image transform; :func:`image_features` maps it over chunks of items on
the Dask client. A missing or unreadable file gives ``has_image = False`` and a reason, never a failed run.

Optional CNN embedding (``img_embedding``, L2-normalised float32): weights come only from a local file
(``RERANK_IMAGE_MODEL_PATH``, a torch ``state_dict``; nothing is ever downloaded). Two architectures, told
apart by the state_dict's keys: :func:`small_cnn` (four strided convolutions, global average pool; any
``state_dict`` saved from it) and torchvision's ``resnet18`` (512-d, only when torchvision is installed;
it is not a dependency). A configured path that does not exist or does not load is a ConfigError.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError

#: Bins per RGB channel of the colour histogram.
HIST_BINS = 4
#: Side of the difference hash (``HASH_SIDE**2`` bits).
HASH_SIDE = 8
#: Input side of the CNN (images are resized to a square this big).
CNN_SIDE = 64
#: Embedding size of :func:`small_cnn`.
CNN_DIM = 64
_MEAN = np.asarray([0.485, 0.456, 0.406], dtype="float32")  # ImageNet statistics, what resnet18 expects
_STD = np.asarray([0.229, 0.224, 0.225], dtype="float32")


def dhash(img: object, side: int = HASH_SIDE) -> str:
    """Difference hash: grey ``side+1 x side`` thumbnail, one bit per horizontal gradient, as hex."""
    from PIL import Image

    g = np.asarray(img.convert("L").resize((side + 1, side), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (g[:, 1:] > g[:, :-1]).flatten()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):0{side * side // 4}x}"


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hex hashes (near-duplicate images are a few bits apart)."""
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def image_row(path: str | Path) -> dict:
    """Features of one image file; ``has_image`` False (with ``img_error``) when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        return {"has_image": False, "img_error": type(exc).__name__}
    small = rgb.resize((32, 32))
    arr = np.asarray(small, dtype=np.uint8).reshape(-1, 3)
    idx = (arr // (256 // HIST_BINS)).astype(np.int64)
    flat = idx[:, 0] * HIST_BINS * HIST_BINS + idx[:, 1] * HIST_BINS + idx[:, 2]
    hist = np.bincount(flat, minlength=HIST_BINS ** 3).astype("float32")
    hist /= hist.sum()
    mean = arr.mean(axis=0) / 255.0
    return {"has_image": True, "img_error": None, "img_width": rgb.width, "img_height": rgb.height,
            "img_hash": dhash(rgb), "img_mean_r": float(mean[0]), "img_mean_g": float(mean[1]),
            "img_mean_b": float(mean[2]), "img_hist": hist.tolist()}


def small_cnn(dim: int = CNN_DIM):  # noqa: ANN201 - a torch.nn.Module (torch is imported lazily)
    """A small CNN: four 3x3 stride-2 convolutions (3-16-32-64-``dim``) with ReLU, global average pool."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, dim, 3, stride=2, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


def check_model_path(path: str | Path | None) -> Path:
    """The weights file, or a ConfigError that names the setting (never a download)."""
    if not path:
        raise ConfigError("no image model path given", "set RERANK_IMAGE_MODEL_PATH to a local .pt state_dict")
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"image model weights not found at {p}",
                          "RERANK_IMAGE_MODEL_PATH must name a local torch state_dict file (weights are never "
                          "downloaded); unset it to skip the CNN embedding")
    return p


def load_image_model(path: str | Path):  # noqa: ANN201 - a torch.nn.Module in eval mode
    """Build the architecture the state_dict belongs to and load it (CPU, eval mode)."""
    p = check_model_path(path)
    return _load_cached(str(p.resolve()), p.stat().st_mtime_ns)


@lru_cache(maxsize=2)
def _load_cached(path: str, _mtime: int):  # noqa: ANN202 - one load per worker process and file version
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"cannot load image model weights {path}: {exc}",
                          "a torch state_dict saved with torch.save(model.state_dict(), path)") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"{path} holds no state_dict", "torch.save(model.state_dict(), path)")
    if "layer1.0.conv1.weight" in state:
        try:
            from torchvision.models import resnet18
        except ImportError as exc:
            raise ConfigError(f"{path} holds resnet18 weights but torchvision is not installed",
                              "install torchvision matching torch, or use small_cnn weights") from exc
        model = resnet18(weights=None)
        model.fc = torch.nn.Identity()
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    else:
        last = [k for k in state if k.endswith(".weight")]
        if not last:
            raise ConfigError(f"{path}: not a small_cnn or resnet18 state_dict", "see pipeline.features.images")
        model = small_cnn(int(state[last[-1]].shape[0]))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"{path}: weights do not fit the model: {str(exc)[:300]}",
                          "a state_dict of pipeline.features.images.small_cnn or torchvision resnet18") from exc
    return model.eval()


def image_tensor(img: object, side: int = CNN_SIDE) -> np.ndarray:
    """``3 x side x side`` float32, ImageNet-normalised, from a PIL image."""
    from PIL import Image

    arr = np.asarray(img.convert("RGB").resize((side, side), Image.Resampling.BILINEAR), dtype="float32") / 255.0
    return ((arr - _MEAN) / _STD).transpose(2, 0, 1)


def embed_images(images: list[np.ndarray], model_path: str | Path, batch_size: int = 64) -> np.ndarray:
    """L2-normalised CNN embeddings (float32, one row per image tensor)."""
    import torch

    model = load_image_model(model_path)
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            z = model(torch.from_numpy(np.stack(images[i:i + batch_size]))).numpy()
            out.append(z.astype("float32"))
    if not out:
        return np.zeros((0, 0), dtype="float32")
    z = np.concatenate(out)
    n = np.linalg.norm(z, axis=1, keepdims=True)
    return (z / np.where(n > 0, n, 1.0)).astype("float32")


def image_chunk(chunk: pd.DataFrame, root: str | None, model_path: str | None = None) -> pd.DataFrame:
    """Transform: features for a chunk of ``item_id, image_path`` rows (relative paths under ``root``);
    with ``model_path`` also ``img_embedding`` (None where the image cannot be read)."""
    from PIL import Image

    rows, tensors, where = [], [], []
    for item_id, p in zip(chunk["item_id"], chunk["image_path"], strict=True):
        path = Path(p)
        if not path.is_absolute() and root:
            path = Path(root) / path
        row = {"item_id": int(item_id), **image_row(path)}
        if model_path and row["has_image"]:
            with Image.open(path) as im:
                tensors.append(image_tensor(im))
            where.append(len(rows))
        rows.append(row)
    out = pd.DataFrame(rows)
    if model_path:
        emb: list[list[float] | None] = [None] * len(out)
        for i, z in zip(where, embed_images(tensors, model_path), strict=True):
            emb[i] = z.tolist()
        out["img_embedding"] = emb
    return out


def image_features(items: pd.DataFrame, client: object | None, *, root: str | Path | None = None,
                   chunk: int = 500, model_path: str | Path | None = None) -> pd.DataFrame:
    """Image features for the items that have an ``image_path`` (empty frame with ``item_id`` otherwise).

    ``model_path``: local CNN weights; adds ``img_embedding`` (checked here, before any task runs)."""
    if model_path:
        check_model_path(model_path)
    if "image_path" not in items.columns:
        return pd.DataFrame({"item_id": pd.Series(dtype="int64"), "has_image": pd.Series(dtype=bool)})
    todo = items.loc[items["image_path"].fillna("").astype(str).str.len() > 0, ["item_id", "image_path"]]
    if todo.empty:
        return pd.DataFrame({"item_id": pd.Series(dtype="int64"), "has_image": pd.Series(dtype=bool)})
    parts = [todo.iloc[i:i + chunk] for i in range(0, len(todo), chunk)]
    root_s = str(root) if root else None
    model_s = str(model_path) if model_path else None
    if client is None:
        frames = [image_chunk(p, root_s, model_s) for p in parts]
    else:
        frames = client.gather(client.map(image_chunk, parts, root=root_s, model_path=model_s, pure=False))
    return pd.concat(frames, ignore_index=True)


#: Pictures per Dask task of the pretrained image encoder.
EMBED_CHUNK = 500
IMAGE_FILE = "item_image_embeddings.parquet"


def resolve_image_path(p: str, root: str | Path | None) -> Path:
    """An ``image_path`` as a file path (relative ones under ``root``)."""
    path = Path(str(p)).expanduser()
    return Path(root) / path if not path.is_absolute() and root else path


def _embed_chunk(paths: list[str], device: str) -> np.ndarray:
    """Dask task: pictures through EfficientNet-Lite0; a row of NaN where a file cannot be read."""
    from PIL import Image, UnidentifiedImageError

    from pipeline.features.encoders import IMAGE_DIM, encode_images, image_array

    arrays, ok = [], []
    for p in paths:
        try:
            with Image.open(p) as im:
                arrays.append(image_array(im))
            ok.append(True)
        except (OSError, UnidentifiedImageError, ValueError):
            ok.append(False)
    out = np.full((len(paths), IMAGE_DIM), np.nan, np.float32)
    if arrays:
        out[np.flatnonzero(ok)] = encode_images(arrays, device=device)
    return out


def image_embeddings(items: pd.DataFrame, client: object | None, *, root: str | Path | None = None,
                     cache_dir: str | Path | None = None, device: str = "cpu",
                     chunk: int = EMBED_CHUNK) -> tuple[np.ndarray, np.ndarray, dict]:
    """Pretrained image vectors of the items with a readable picture, cached by a hash of the file.

    Returns (item_ids, ``n x 1280`` matrix, counts: ``items_with_image``, ``items_without_image`` (no path),
    ``images_unreadable``, ``images_embedded``, ``images_cached``). Items without a picture are left out;
    the fusion gives them their text vector alone."""
    from pipeline.features.embed_cache import EmbeddingCache, file_key
    from pipeline.features.encoders import IMAGE_DIM, IMAGE_MODEL, require_image_encoder

    require_image_encoder()
    paths = items["image_path"] if "image_path" in items.columns else pd.Series(None, index=items.index)
    has_path = paths.fillna("").astype(str).str.len() > 0
    ids = items.loc[has_path, "item_id"].to_numpy(dtype=np.int64)
    files = [str(resolve_image_path(p, root)) for p in paths[has_path]]
    keys = [file_key(f) for f in files]
    cache = EmbeddingCache(cache_dir, IMAGE_MODEL)
    found, _ = cache.get([k or "" for k in keys])
    todo = list(dict.fromkeys(k for k, f in zip(keys, found, strict=True) if k is not None and not f))
    file_of = {k: f for k, f in zip(keys, files, strict=True) if k is not None}
    parts = [[file_of[k] for k in todo[s:s + chunk]] for s in range(0, len(todo), chunk)]
    if client is None or len(parts) <= 1:
        out = [_embed_chunk(p, device) for p in parts]
    else:
        out = client.gather(client.map(_embed_chunk, parts, device=device, pure=False))
    bad = set()
    if todo:
        z = np.vstack(out)
        good = np.isfinite(z).all(axis=1)
        bad = {k for k, g in zip(todo, good, strict=True) if not g}
        cache.put([k for k, g in zip(todo, good, strict=True) if g], z[good])
    ok = np.array([k is not None and k not in bad for k in keys], dtype=bool)
    _, vecs = cache.get([k for k, o in zip(keys, ok, strict=True) if o])
    mat = np.vstack(vecs).astype(np.float32) if vecs else np.zeros((0, IMAGE_DIM), np.float32)
    cache.save(keep=[k for k in keys if k is not None and k not in bad])
    stats = {"items_with_image": int(ok.sum()), "items_without_image": int((~has_path).sum()),
             "images_unreadable": int((~ok).sum()), "images_embedded": len(todo) - len(bad),
             "images_cached": int(found.sum())}
    return ids[ok], mat, stats
