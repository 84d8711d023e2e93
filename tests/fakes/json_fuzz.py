"""Shared pieces of the fuzz and property tests: random JSON values and paths into them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

__all__ = ["json_paths", "json_scalars", "json_values", "mutate_json"]


def json_scalars(texts: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """None, booleans, ints (huge ones too), floats (NaN and infinities too) and `texts`."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=-(2**80), max_value=2**80),
        st.floats(allow_nan=True, allow_infinity=True),
        texts,
    )


def json_values(texts: st.SearchStrategy[str], keys: Sequence[str]) -> st.SearchStrategy[Any]:
    """Any JSON-like value built from `json_scalars`, with dict keys mostly from `keys`, so
    that the random values hit the fields a parser looks at."""
    return st.recursive(
        json_scalars(texts),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(
                st.one_of(st.sampled_from(list(keys)), st.text(max_size=5)), inner, max_size=5
            ),
        ),
        max_leaves=20,
    )


def json_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys and indexes) into `value`, the empty path first."""
    paths = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            paths += json_paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            paths += json_paths(child, (*prefix, i))
    return paths


def mutate_json(draw: st.DrawFn, value: Any, values: st.SearchStrategy[Any]) -> Any:
    """`value` (changed in place) with one value somewhere in it replaced by one drawn from
    `values`, or one key removed; the empty path replaces the whole value."""
    path = draw(st.sampled_from(json_paths(value)))
    if not path:
        return draw(values)
    parent = value
    for step in path[:-1]:
        parent = parent[step]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(values)
    return value
