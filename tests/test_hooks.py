"""presenced.hooks: order, isolation of a failing handler, changes during a fire."""

from presenced.hooks import Hooks


def test_handlers_run_in_order_and_a_failing_one_is_isolated(logged_errors):
    hooks, seen = Hooks(), []
    hooks.add("x", lambda v: seen.append(("a", v)))
    hooks.add("x", lambda v: 1 / 0)
    hooks.add("x", lambda v: seen.append(("c", v)))
    hooks.fire("x", 1)
    assert seen == [("a", 1), ("c", 1)]
    assert hooks.collect("x", 2) == [None, None]
    assert seen[2:] == [("a", 2), ("c", 2)]
    assert len(logged_errors) == 2


def test_a_name_nobody_listens_to_fires_nothing():
    hooks = Hooks()
    hooks.fire("nobody", 1)
    assert hooks.collect("nobody") == []
    handler = lambda: None  # noqa: E731
    hooks.add("x", handler)
    hooks.remove("x", handler)
    hooks.remove("x", handler)  # twice: no error
    assert hooks.collect("x") == []


def test_a_handler_added_or_removed_during_a_fire_counts_from_the_next_one():
    hooks, seen = Hooks(), []

    def first():
        seen.append("first")
        hooks.remove("x", first)
        hooks.add("x", late)

    def late():
        seen.append("late")

    hooks.add("x", first)
    hooks.fire("x")
    assert seen == ["first"]
    hooks.fire("x")
    assert seen == ["first", "late"]
