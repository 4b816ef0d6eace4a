"""Barabási–Albert friends graphs for the benchmarks (store, PEP, comet).

A social graph is not uniform: a few users have thousands of friends, most have a handful.
Preferential attachment reproduces that: each new user befriends ``m`` distinct existing users,
each picked with probability proportional to their current number of friends. Edges are
yielded as they are made, so a million-user graph never exists as a Python list of pairs; the
only state is one compact array of endpoints (4 bytes each, ``2·m·n`` of them).

Usage from another bench::

    from bench.graph import barabasi_albert, write_edge_list
    for a, b in barabasi_albert(100_000, 15, seed=1): ...
    write_edge_list(path, barabasi_albert(n, m, seed))     # what ``load-friends`` reads

Run as a script to write an edge list: ``python3 -m bench.graph --n 1000 --m 5 out.txt``.
"""

from __future__ import annotations

import argparse
import random
from array import array
from typing import Iterable, Iterator, Optional


def barabasi_albert(n: int, m: int, seed: Optional[int] = None) -> Iterator[tuple[int, int]]:
    """Yield the ``(new_user, old_user)`` edges of a BA graph on users ``0 .. n-1``.

    Users ``0 .. m`` start as a star around user 0 (``m`` edges, so every early user has a
    friend to be picked by); every later user adds ``m`` edges to distinct earlier users.
    Total edges: ``m * (n - m)``. The same ``seed`` gives the same graph.
    """
    if m < 1 or n <= m:
        raise ValueError(f"need 1 <= m < n, got n={n} m={m}")
    rng = random.Random(seed)
    # Every endpoint of every edge so far: a user appears once per friend it has, so a uniform
    # pick from this array is a pick proportional to degree.
    ends = array("I")
    for leaf in range(1, m + 1):
        yield leaf, 0
        ends.append(0)
        ends.append(leaf)
    pick = rng.random
    for user in range(m + 1, n):
        size = len(ends)
        targets: set[int] = set()
        while len(targets) < m:
            targets.add(ends[int(pick() * size)])
        for target in targets:
            yield user, target
        ends.extend(targets)
        ends.extend([user] * m)


def user_name(index: int) -> str:
    """The local part benches give user ``index`` (``u123``); ``load-friends`` adds the domain."""
    return f"u{index}"


def write_edge_list(path: str, edges: Iterable[tuple[int, int]]) -> int:
    """Write ``u<a> u<b>`` lines (the ``load-friends`` format); returns the number of edges."""
    count = 0
    with open(path, "w", buffering=1 << 20) as out:
        chunk: list[str] = []
        for a, b in edges:
            chunk.append(f"u{a} u{b}\n")
            if len(chunk) >= 65536:
                out.writelines(chunk)
                count += len(chunk)
                chunk.clear()
        out.writelines(chunk)
        count += len(chunk)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a Barabási–Albert edge list.")
    parser.add_argument("--n", type=int, default=100_000, help="users")
    parser.add_argument("--m", type=int, default=15, help="edges per new user")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("path")
    args = parser.parse_args()
    print(write_edge_list(args.path, barabasi_albert(args.n, args.m, args.seed)))


if __name__ == "__main__":
    main()
