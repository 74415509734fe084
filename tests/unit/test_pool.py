"""The upstream pool's choice rules (`proxy.upstream.pool`), with a fake clock and a seeded RNG."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import Timeouts, UpstreamConfig
from proxy.upstream.pool import Entry, Pool, entries_from_config


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(name: str, weight: int = 1, models: tuple[str, ...] = ()) -> Entry:
    return Entry(name, f"http://{name}/v1/complete", "key", weight, frozenset(models), Timeouts())


def test_weights_share_the_traffic() -> None:
    a, b = entry("a", 3), entry("b", 1)
    pool = Pool([a, b], cooldown=30, clock=Clock(), rng=random.Random(7))
    counts = Counter(pool.choose("m").name for _ in range(4000))  # type: ignore[union-attr]
    assert 2800 < counts["a"] < 3200
    assert counts["a"] + counts["b"] == 4000


def test_a_failed_entry_cools_down_and_comes_back() -> None:
    clock = Clock()
    a, b = entry("a", 100), entry("b", 1)
    pool = Pool([a, b], cooldown=30, clock=clock, rng=random.Random(1))
    pool.cool(a)
    assert {pool.choose("m") for _ in range(50)} == {b}
    assert pool.cooling() == ["a"]
    clock.now += 30.01
    assert pool.cooling() == []
    assert pool.choose("m") is a  # weight 100 against 1: a again (seeded)


def test_retry_after_longer_than_the_cooldown_wins() -> None:
    clock = Clock()
    a, b = entry("a"), entry("b")
    pool = Pool([a, b], cooldown=1, clock=clock)
    pool.cool(a, retry_after=10)
    clock.now += 5
    assert not pool.is_ready(a)
    assert pool.is_ready(b)


def test_failover_prefers_untried_entries_then_the_soonest_back() -> None:
    clock = Clock()
    a, b, c = entry("a"), entry("b"), entry("c")
    pool = Pool([a, b, c], cooldown=30, clock=clock, rng=random.Random(3))
    pool.cool(a)
    assert pool.choose("m", tried=[a, b]) is c
    pool.cool(b, retry_after=60)
    pool.cool(c, retry_after=90)
    # Everything tried and cooling: the untried-first rule has nothing left, so the soonest back.
    assert pool.choose("m", tried=[a, b, c]) is a
    # An untried entry beats a tried one even when it comes back later.
    assert pool.choose("m", tried=[a]) is b


def test_standby_entries_only_serve_when_the_weighted_ones_cool() -> None:
    main, standby = entry("main", 1), entry("standby", 0)
    pool = Pool([main, standby], cooldown=30, clock=Clock())
    assert {pool.choose("m") for _ in range(20)} == {main}
    pool.cool(main)
    assert pool.choose("m") is standby


def test_model_groups() -> None:
    general, instant = entry("general"), entry("instant", models=("claude-instant-1.2",))
    pool = Pool([general, instant], cooldown=30, clock=Clock())
    assert pool.choose("claude-instant-1.2") is instant
    assert pool.choose("claude-2.1") is general
    only_listed = Pool([instant], cooldown=30, clock=Clock())
    assert only_listed.choose("claude-2.1") is None


def test_a_single_entry_is_always_chosen_even_while_cooling() -> None:
    only = entry("only")
    pool = Pool([only], cooldown=30, clock=Clock())
    pool.cool(only)
    assert pool.choose("m", tried=[only]) is only


def test_entries_from_config_single_and_pool() -> None:
    single = entries_from_config(UpstreamConfig(base_url="http://127.0.0.1:9/", api_key="k"))  # type: ignore[arg-type]
    assert [(e.name, e.url, e.api_key) for e in single] == [
        ("127.0.0.1:9", "http://127.0.0.1:9/v1/complete", "k")
    ]
    config = UpstreamConfig.model_validate(
        {
            "api_key": "shared",
            "timeouts": {"idle": 5},
            "pool": [
                {"base_url": "http://h:1", "api_key": "own", "timeouts": {"total": 7}},
                {"base_url": "http://h:1", "weight": 0},
                {"name": "named", "base_url": "http://x", "models": ["claude-2.1"]},
            ],
        }
    )
    entries = entries_from_config(config)
    assert [e.name for e in entries] == ["h:1", "h:1#2", "named"]
    assert [e.api_key for e in entries] == ["own", "shared", "shared"]
    assert (entries[0].timeouts.idle, entries[0].timeouts.total) == (5, 7)
    assert entries[1].timeouts.total == Timeouts().total
    assert entries[2].models == {"claude-2.1"}


def test_pool_config_rejects_duplicate_names_and_double_keys() -> None:
    with pytest.raises(ValueError, match="unique"):
        UpstreamConfig.model_validate({"pool": [{"name": "a", "base_url": "http://x"}] * 2})
    with pytest.raises(ValueError, match="not both"):
        UpstreamConfig.model_validate(
            {"pool": [{"base_url": "http://x", "api_key": "k", "api_key_env": "K"}]}
        )


@given(
    weights=st.lists(st.integers(0, 5), min_size=1, max_size=6),
    cooling=st.lists(st.booleans(), min_size=6, max_size=6),
    tried=st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_choice_is_always_in_the_group_and_healthy_when_possible(
    weights: list[int], cooling: list[bool], tried: list[bool]
) -> None:
    clock = Clock()
    entries = [entry(f"e{i}", w) for i, w in enumerate(weights)]
    pool = Pool(entries, cooldown=30, clock=clock, rng=random.Random(0))
    for item, cool in zip(entries, cooling, strict=False):
        if cool:
            pool.cool(item)
    already = [e for e, t in zip(entries, tried, strict=False) if t]
    chosen = pool.choose("m", already)
    assert chosen in entries
    healthy_untried = [e for e in entries if pool.is_ready(e) and e not in already]
    if len(entries) > 1 and healthy_untried:
        assert chosen in healthy_untried
        if any(e.weight > 0 for e in healthy_untried):
            assert chosen.weight > 0


def test_entry_names_never_carry_url_credentials() -> None:
    single = entries_from_config(UpstreamConfig(base_url="https://user:s3cret@upstream.example:8443"))
    assert [e.name for e in single] == ["upstream.example:8443"]
    pooled = entries_from_config(
        UpstreamConfig.model_validate(
            {"pool": [{"base_url": "http://a:pw1@h1:1"}, {"base_url": "http://b:pw2@h1:1"}], "api_key": "k"}
        )
    )
    assert [e.name for e in pooled] == ["h1:1", "h1:1#2"]
