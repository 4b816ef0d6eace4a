"""The process's memory policy (presenced/memory.py): the collector's pace once ready."""

from __future__ import annotations

import gc

from presenced.memory import FULL_COLLECTION_EVERY, pace_collector


def test_once_ready_start_up_objects_are_frozen_and_full_collections_are_rarer():
    threshold = gc.get_threshold()
    built_at_start_up = [object() for _ in range(3)], {"config": [1, 2]}
    try:
        pace_collector()
        assert gc.get_threshold() == (threshold[0], threshold[1], FULL_COLLECTION_EVERY)
        assert gc.get_freeze_count() > 0
        # Start-up objects are out of every collection; what comes later is collected.
        assert not any(o is built_at_start_up for o in gc.get_objects())
        later = []
        later.append(later)             # a cycle made after start-up
        assert any(o is later for o in gc.get_objects(generation=0))
        del later
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
