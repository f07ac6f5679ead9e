"""The challenger lists the evaluation keeps for `recommendations`: read back only when whole and deep enough."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import scored_lists
from pipelines.recommendations_table import PrescoredLists
from als_store.settings import Settings


def lists(depth: int, users: int = 4) -> PrescoredLists:
    rng = np.random.default_rng(depth)
    return PrescoredLists(np.arange(users) * 2, rng.integers(-1, 100, (users, depth)),
                          rng.random((users, depth), dtype=np.float32))


def test_kept_lists_load_back_when_deep_enough(settings: Settings):
    kept = lists(50)
    scored_lists.save(settings, "a1b2", kept)
    loaded = scored_lists.load(settings, "a1b2", 20)
    assert np.array_equal(loaded.rows, kept.rows)
    assert np.array_equal(loaded.item_index, kept.item_index)
    assert np.array_equal(loaded.scores, kept.scores)
    assert scored_lists.load(settings, "a1b2", 50) is not None
    assert scored_lists.load(settings, "a1b2", 51) is None  # too shallow: score again
    assert scored_lists.load(settings, "c3d4", 10) is None  # another run's model


def test_damaged_file_means_scoring_again_and_old_files_go(settings: Settings):
    for number in range(scored_lists.KEEP + 2):
        path = scored_lists.save(settings, f"run{number}", lists(10))
    assert sorted(p.stem for p in path.parent.glob("*.npz")) == [f"run{n}" for n in range(2, scored_lists.KEEP + 2)]
    path.write_bytes(path.read_bytes()[:100])  # cut short
    assert scored_lists.load(settings, path.stem, 10) is None
    with pytest.raises(ValueError):
        scored_lists.save(settings, "../escape", lists(10))
