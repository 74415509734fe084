"""The upstream pool: which entry serves the next attempt (pure; the clock is injectable).

| Situation | Choice |
|---|---|
| entries list the model in `models` | only those entries (the model's group) |
| no entry lists the model | the entries with an empty `models` (the default group) |
| within the group | weighted random over entries not cooling down and not yet tried by this request |
| all of those tried or cooling down | the untried entry, else any entry, whose cooldown ends first |

An entry cools down after a 429, 529, 5xx or connection failure, for `upstream.cooldown` seconds or the
upstream's `retry-after` if that is longer. A single-entry pool is always chosen: the cooldown only
steers traffic between entries, it never refuses a request on its own.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from proxy.config import Timeouts, UpstreamConfig


@dataclass(eq=False)
class Entry:
    """One upstream as the client uses it: resolved URL, key and timeouts, plus its cooldown."""

    name: str
    url: str  # the full `/v1/complete` URL
    api_key: str | None  # None: the client's own key is passed through
    weight: int
    models: frozenset[str]
    timeouts: Timeouts
    cooling_until: float = field(default=0.0)


COMPLETE_PATH = "/v1/complete"


def _host(url: str) -> str:
    """An entry's default name: the URL's host and port, never its `user:password@`."""
    return urlsplit(url).netloc.rpartition("@")[2]


def entries_from_config(config: UpstreamConfig) -> list[Entry]:
    """The pool entries, or the single `base_url`/`api_key` entry when no pool is configured.

    An entry without a key of its own uses `upstream.api_key`; without that too, the client's key.
    """
    shared_key = config.api_key.get_secret_value() if config.api_key else None
    if not config.pool:
        host = _host(config.base_url)
        return [Entry(host, config.base_url + COMPLETE_PATH, shared_key, 1, frozenset(), config.timeouts)]
    entries = []
    seen: dict[str, int] = {}
    for item in config.pool:
        name = item.name
        if name is None:
            host = _host(item.base_url)
            seen[host] = seen.get(host, 0) + 1
            name = host if seen[host] == 1 else f"{host}#{seen[host]}"
        key = item.api_key.get_secret_value() if item.api_key else shared_key
        timeouts = item.timeouts.over(config.timeouts)
        entries.append(
            Entry(name, item.base_url + COMPLETE_PATH, key, item.weight, frozenset(item.models), timeouts)
        )
    return entries


class Pool:
    def __init__(
        self,
        entries: Sequence[Entry],
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not entries:
            raise ValueError("the upstream pool needs at least one entry")
        self.entries = list(entries)
        self.cooldown = cooldown
        self._clock = clock
        self._random = rng or random.Random()
        self._default = [e for e in self.entries if not e.models]
        self._needs_client_key = any(entry.api_key is None for entry in self.entries)  # asked per request
        self._groups: dict[str, list[Entry]] = {}
        for entry in self.entries:
            for model in entry.models:
                self._groups.setdefault(model, []).append(entry)

    def group(self, model: str) -> list[Entry]:
        """The entries that may serve `model` (possibly empty: no default group and no listing)."""
        return self._groups.get(model) or self._default

    def needs_client_key(self) -> bool:
        return self._needs_client_key

    def choose(self, model: str, tried: Sequence[Entry] = ()) -> Entry | None:
        group = self.group(model)
        if len(group) == 1:
            return group[0]
        if not group:
            return None
        now = self._clock()
        ready = [e for e in group if e.cooling_until <= now and e not in tried]
        weighted = [e for e in ready if e.weight > 0]
        if weighted:
            if len(weighted) == 1:
                return weighted[0]
            return self._random.choices(weighted, weights=[e.weight for e in weighted])[0]
        if ready:
            return ready[0]  # standby entries (weight 0), in configuration order
        untried = [e for e in group if e not in tried] or group
        return min(untried, key=lambda e: e.cooling_until)

    def is_ready(self, entry: Entry) -> bool:
        return entry.cooling_until <= self._clock()

    def cool(self, entry: Entry, retry_after: float | None = None) -> None:
        """Take `entry` out of rotation for the cooldown (or the upstream's longer retry-after)."""
        seconds = max(self.cooldown, retry_after or 0.0)
        entry.cooling_until = max(entry.cooling_until, self._clock() + seconds)

    def cooldown_left(self, entry: Entry) -> float:
        """Seconds until `entry` is back in rotation, 0 when it is (read by the metrics at scrape time)."""
        return max(0.0, entry.cooling_until - self._clock())

    def cooling(self) -> list[str]:
        now = self._clock()
        return [entry.name for entry in self.entries if entry.cooling_until > now]
