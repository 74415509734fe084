"""Counters, histograms and gauges of one process, counted in plain numbers and exposed through
prometheus-client's documented custom-collector API, so that the scrape is the library's own
exposition (same families, samples, labels, order and `_created` series).

Why: the proxy changes them only on the event loop's thread, once or twice per request, and each
change of a library metric takes a lock (a histogram observation two, plus a Python loop over its
buckets): about 2 µs per request. These change an attribute instead. They serve the single-process
mode only: in multiprocess mode the library's metrics write the shared files (`proxy.http.metrics`).

Each class mirrors what the proxy uses of its library counterpart: `labels(*values)` (children made on
first use, exported in that order, even at zero, with the time they were made) and the child's `inc`
or `observe`; `tests/unit/test_metrics_exposition.py` checks the exposition against the library's over
random request sequences.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


def _created_series() -> bool:
    """Whether the library exports `_created` samples now (PROMETHEUS_DISABLE_CREATED_SERIES, or its
    `disable_created_metrics()`): read from the library, so both follow the same switch."""
    return bool(getattr(metrics, "_use_created", True))


class LiveGauge(Collector):
    """A gauge without labels; `inc`/`dec` by one."""

    def __init__(self, name: str, documentation: str, *, registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.value = 0
        registry.register(self)

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.name, self.documentation, value=self.value)


class _CounterChild:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class LiveCounter(Collector):
    """A counter with labels (never negative increments: the proxy only counts)."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], *, registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _CounterChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> _CounterChild:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = _CounterChild()
        return child

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        created = _created_series()
        for values, child in list(self._children.items()):
            family.add_metric(values, child.value, created=child.created if created else None)
        yield family


class _HistogramChild:
    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0.0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        """The library's rule: the first bucket whose bound is >= amount (a NaN lands in none)."""
        self.sum += amount
        if amount == amount:  # not NaN
            self.counts[bisect_left(self.bounds, amount)] += 1


class LiveHistogram(Collector):
    """A histogram with labels and fixed bucket bounds (+Inf added, as the library does)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        bounds = [float(bound) for bound in buckets]
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.bounds = tuple(bounds)
        self._les = [floatToGoString(bound) for bound in self.bounds]  # type: ignore[no-untyped-call]
        self._children: dict[tuple[str, ...], _HistogramChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> _HistogramChild:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = _HistogramChild(self.bounds)
        return child

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        created = _created_series()
        for values, child in list(self._children.items()):
            cumulative, total = [], 0.0
            for le, count in zip(self._les, child.counts, strict=True):
                total += count
                cumulative.append((le, total))
            family.add_metric(values, cumulative, child.sum)
            if created:
                family.add_sample(
                    self.name + "_created", dict(zip(self.labelnames, values, strict=True)), child.created
                )
        yield family
