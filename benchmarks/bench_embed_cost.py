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

On a shared machine, other processes' load shifts wall times between the calls. So the cold paths run in
``--chunks`` interleaved chunks (bare then pipeline, then pipeline then bare, ...) and each figure is given as
wall time and as this process's CPU time (every thread's), which other processes' load barely moves. The
cache keeps only the keys of the items it was last given (it follows the catalogue), so each cold chunk's
pipeline call is given the items so far, as a night with new items is: the earlier chunks come from the cache
(their files are hashed again: a small bias against the pipeline path).
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


class Clock:
    """Wall and process CPU seconds, summed over the calls it timed."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __call__(self, fn):  # noqa: ANN001, ANN204
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        self.wall += time.perf_counter() - w
        self.cpu += time.process_time() - c
        return out

    def ratio(self, base: Clock) -> str:
        return f"x{self.wall / base.wall:.2f} wall, x{self.cpu / base.cpu:.2f} CPU"

    def per_item(self, n: int) -> str:
        return f"{1000 * self.wall / n:.2f} ms/item wall, {1000 * self.cpu / n:.2f} ms/item CPU"


def _interleaved(n: int, chunks: int, bare, path) -> tuple[Clock, Clock]:  # noqa: ANN001
    """``bare(lo, hi)`` and ``path(lo, hi)`` over ``chunks`` slices of ``range(n)``, alternating which goes first."""
    cb, cp = Clock(), Clock()
    bounds = np.linspace(0, n, max(1, chunks) + 1).astype(int)
    for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        pair = [(cb, bare), (cp, path)]
        for clock, fn in pair if k % 2 == 0 else pair[::-1]:
            clock(lambda fn=fn, lo=lo, hi=hi: fn(lo, hi))
    return cb, cp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--image-items", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--chunks", type=int, default=8, help="interleaved bare/pipeline chunks of the cold runs")
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
        cache = tmp_p / "cache"
        n = len(items)
        order = items.sort_values("item_id").reset_index(drop=True)

        def text_path(lo: int, hi: int) -> dict:
            part = tmp_p / f"snap-{lo}"  # the items so far: earlier chunks are cached, this one is new
            part.mkdir()
            order.iloc[:hi].to_parquet(part / "items.parquet")
            return build_item_embeddings(part, method="multilingual", cache_dir=cache)

        bare, cold = _interleaved(n, args.chunks, lambda lo, hi: encode_texts(texts[lo:hi]), text_path)
        warm = Clock()
        m2 = warm(lambda: build_item_embeddings(snap, method="multilingual", cache_dir=cache))
        print(f"text, {n} items ({m2['model']}), {args.chunks} interleaved chunks: bare batch {bare.wall:.1f}s "
              f"({bare.per_item(n)}); pipeline cold cache {cold.wall:.1f}s ({cold.per_item(n)}; {cold.ratio(bare)} "
              f"of bare), cached re-run of all {warm.wall:.2f}s ({warm.ratio(bare)} of bare; embedded "
              f"{m2['embedded']}, cached {m2['cached']})")

        some = items.head(args.image_items)
        draw = Clock()
        some = draw(lambda: write_item_images(some, tmp_p / "img", seed=args.seed))
        arrays = []
        for p in some["image_path"]:
            with Image.open(p) as im:
                arrays.append(image_array(im))
        encode_images(arrays[:4])  # load the model outside the timings
        icache = tmp_p / "icache"
        k = len(some)
        embedded = {"n": 0}

        def image_path(lo: int, hi: int) -> None:
            embedded["n"] += image_embeddings(some.iloc[:hi], None, cache_dir=icache)[2]["images_embedded"]

        bare_i, cold_i = _interleaved(k, args.chunks, lambda lo, hi: encode_images(arrays[lo:hi]), image_path)
        warm_i = Clock()
        s2 = warm_i(lambda: image_embeddings(some, None, cache_dir=icache))[2]
        print(f"images, {k} pictures (drawn in {draw.wall:.1f}s), {args.chunks} interleaved chunks: bare batch "
              f"{bare_i.wall:.1f}s ({bare_i.per_item(k)}); pipeline cold cache {cold_i.wall:.1f}s "
              f"({cold_i.per_item(k)}; {cold_i.ratio(bare_i)} of bare; embedded {embedded['n']}), cached re-run "
              f"of all {warm_i.wall:.2f}s ({warm_i.ratio(bare_i)} of bare; cached {s2['images_cached']})")

if __name__ == "__main__":
    main()
