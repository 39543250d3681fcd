"""Cost of item understanding: per-item embedding time of the pipeline path against the encoder's bare batch
call in the same run, and the cached re-run (issue 24, acceptance 3).

    python benchmarks/bench_embed_cost.py [--items 20000] [--image-items 20000] [--seed 42]

A generated catalogue of ``--items`` items (tier M: 20000) with a drawn picture each. Text: the pipeline
path is :func:`pipeline.features.text.build_item_embeddings` (multilingual, hash cache, no Dask client: one
process, like the bare call) on a snapshot folder; the bare call is :func:`encode_texts` on the same texts
with the model already loaded. Images (the first ``--image-items`` items): the pipeline path is
:func:`pipeline.features.images.image_embeddings` (file hash, read, resize, encode, cache); the bare call is
:func:`encode_images` on the already preprocessed arrays. Each path runs twice: cold cache, then cached.
Ratios are to the bare call of the same run; figures only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.datagen.build import DEFAULT_END  # noqa: E402
from pipeline.datagen.catalog import build_catalog  # noqa: E402
from pipeline.datagen.images import write_item_images  # noqa: E402
from pipeline.features.encoders import encode_images, encode_texts, image_array  # noqa: E402
from pipeline.features.images import image_embeddings  # noqa: E402
from pipeline.features.text import MODEL_CHARS, build_item_embeddings, item_texts  # noqa: E402


def _timed(fn):  # noqa: ANN001, ANN202
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--image-items", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        tmp_p = Path(tmp)
        end_ms = int(DEFAULT_END.timestamp() * 1000)
        items = build_catalog(np.random.default_rng(args.seed), args.items, end_ms - 30 * 86_400_000, 30).items
        snap = tmp_p / "snapshot"
        snap.mkdir()
        items.to_parquet(snap / "items.parquet")
        texts = [t[:MODEL_CHARS] for t in item_texts(items.sort_values("item_id")).tolist()]
        encode_texts(texts[:8])  # load the model outside the timings
        _, bare = _timed(lambda: encode_texts(texts))
        cache = tmp_p / "cache"
        m1, cold = _timed(lambda: build_item_embeddings(snap, method="multilingual", cache_dir=cache))
        m2, warm = _timed(lambda: build_item_embeddings(snap, method="multilingual", cache_dir=cache))
        n = len(items)
        print(f"text, {n} items ({m1['model']}): bare batch {bare:.1f}s ({1000 * bare / n:.2f} ms/item); "
              f"pipeline cold cache {cold:.1f}s ({1000 * cold / n:.2f} ms/item, x{cold / bare:.2f} of bare; "
              f"embedded {m1['embedded']}), cached re-run {warm:.2f}s (x{warm / bare:.3f} of bare; "
              f"embedded {m2['embedded']}, cached {m2['cached']})")

        some = items.head(args.image_items)
        _, draw = _timed(lambda: write_item_images(some, tmp_p / "img", seed=args.seed))
        some = write_item_images(some, tmp_p / "img", seed=args.seed)
        arrays = []
        for p in some["image_path"]:
            with Image.open(p) as im:
                arrays.append(image_array(im))
        encode_images(arrays[:4])  # load the model outside the timings
        _, bare_i = _timed(lambda: encode_images(arrays))
        icache = tmp_p / "icache"
        (_, _, s1), cold_i = _timed(lambda: image_embeddings(some, None, cache_dir=icache))
        (_, _, s2), warm_i = _timed(lambda: image_embeddings(some, None, cache_dir=icache))
        k = len(some)
        print(f"images, {k} pictures (drawn in {draw:.1f}s): bare batch {bare_i:.1f}s "
              f"({1000 * bare_i / k:.1f} ms/item); "
              f"pipeline cold cache {cold_i:.1f}s ({1000 * cold_i / k:.1f} ms/item, x{cold_i / bare_i:.2f} of bare; "
              f"embedded {s1['images_embedded']}), cached re-run {warm_i:.2f}s (x{warm_i / bare_i:.3f} of bare; "
              f"cached {s2['images_cached']})")


if __name__ == "__main__":
    main()
