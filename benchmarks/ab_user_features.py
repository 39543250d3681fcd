"""Issue 24: ``eval_nightly.py`` with or without the ranker's user-profile inputs (the user_features stage's figures).

    python benchmarks/ab_user_features.py --seed 3 --no-plain-arm                              # with them
    BENCH_NO_PROFILE=1 python benchmarks/ab_user_features.py --seed 3 --no-plain-arm    # without

Every argument goes to ``benchmarks/eval_nightly.py``. ``BENCH_NO_PROFILE`` is read here only (not a RERANK_ setting:
those are strict): it drops
:data:`pipeline.rank.features.PROFILE_FEATURES` from the feature space a new ranker is fitted with. That is
enough for the whole run: train_ranker runs in this process, and the shards score with the feature list saved
in the model.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def drop_profile_inputs() -> None:
    """New rankers are fitted without the profile inputs (as before they existed)."""
    from pipeline.rank.features import PROFILE_FEATURES, FeatureSpace

    fit = FeatureSpace.fit.__func__  # type: ignore[attr-defined]

    def without(cls: type, *args: object, **kwargs: object) -> FeatureSpace:
        space = fit(cls, *args, **kwargs)
        space.numeric = tuple(n for n in space.numeric if n not in PROFILE_FEATURES)
        return space

    FeatureSpace.fit = classmethod(without)  # type: ignore[method-assign, assignment]


if __name__ == "__main__":
    if os.environ.get("BENCH_NO_PROFILE") == "1":
        drop_profile_inputs()
        print("ranker inputs: without the user profile (BENCH_NO_PROFILE=1)")
    else:
        print("ranker inputs: with the user profile")
    import eval_nightly

    eval_nightly.main()
