"""The job graph: per key group, a source reader and a chain of operators; one sink task.

::

    key group 0:  source reader -> op 1 -> op 2 -> ... -> op k --channel--\
    key group 1:  source reader -> op 1 -> op 2 -> ... -> op k --channel---+--> sink task
    ...                                                                   /    (aligns barriers)

Inside a key group's chain, operators call each other directly (no queue). Each chain ends in
a bounded :class:`Channel` to the sink task, which has one input per key group and aligns
checkpoint barriers across them (barriers.py). Because every chain, and all its state, belongs
to one key group, a key group can be added, restored, revoked and handed over alone.

Which chain operators feed the sink: the last one always; others listed in ``sink_taps``
(e.g. every tier: the 1m tier's results go both to the 1h tier and to the sink).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from metricsflow.errors import ConfigurationError
from metricsflow.runtime.base import Operator
from metricsflow.runtime.records import SideOutput, StreamElement
from metricsflow.runtime.source import Source
from metricsflow.state.base import KeyedStateBackend

StateBackendFactory = Callable[[str, int], KeyedStateBackend]
"""``(uid, key_group) -> backend``: a fresh, empty backend for one operator of one key group."""


@dataclass(frozen=True, slots=True)
class SideOutputElement:
    """An element an operator sent to a side output (``Output.emit_side``), in a channel."""

    tag: str
    element: SideOutput


ChannelElement = StreamElement | SideOutputElement


@dataclass(frozen=True)
class JobGraph:
    """What a job runs. ``chain_factory(key_group)`` builds that key group's operators (new
    instances every call); ``sink_factory()`` builds the sink task's operator."""

    name: str
    source: Source
    chain_factory: Callable[[int], Sequence[Operator]]
    sink_factory: Callable[[], Operator]
    key_groups: frozenset[int]
    sink_taps: frozenset[str] = field(default_factory=frozenset)
    channel_capacity: int = 8

    def __post_init__(self) -> None:
        if self.channel_capacity < 1:
            raise ConfigurationError(
                f"JobGraph.channel_capacity must be >= 1, got {self.channel_capacity}"
            )

    def chain_uids(self) -> tuple[str, ...]:
        probe = next(iter(sorted(self.key_groups)), 0)
        uids = tuple(op.uid for op in self.chain_factory(probe))
        if len(set(uids)) != len(uids):
            raise ConfigurationError(f"operator uids must be unique in a chain, got {uids!r}")
        return uids

    def uids(self, sink_uid: str) -> frozenset[str]:
        """Every uid of the job: source, chain operators and sink."""
        return frozenset((self.source.uid, *self.chain_uids(), sink_uid))


class Channel:
    """A bounded FIFO between a chain and the sink task (backpressure: ``put`` waits)."""

    def __init__(self, capacity: int, on_put: Callable[[], None]) -> None:
        self.capacity = capacity
        self._items: collections.deque[ChannelElement] = collections.deque()
        self._not_full = asyncio.Event()
        self._not_full.set()
        self._on_put = on_put
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, element: ChannelElement) -> None:
        while len(self._items) >= self.capacity:
            self._not_full.clear()
            await self._not_full.wait()
        self._items.append(element)
        self._on_put()

    def poll(self) -> ChannelElement | None:
        if not self._items:
            return None
        element = self._items.popleft()
        if len(self._items) < self.capacity:
            self._not_full.set()
        return element

    def close(self) -> None:
        """The reader is gone: release a blocked writer (its elements are discarded)."""
        self.closed = True
        self._items.clear()
        self._not_full.set()


class InputGate:
    """The sink task's inputs: one channel per key group; blocked channels are not read."""

    def __init__(self) -> None:
        self._channels: dict[int, Channel] = {}
        self._blocked: set[int] = set()
        self._data = asyncio.Event()
        self._order: list[int] = []
        self._next = 0

    def _notify(self) -> None:
        self._data.set()

    def add_channel(self, key_group: int, capacity: int) -> Channel:
        channel = Channel(capacity, self._notify)
        self._channels[key_group] = channel
        self._order = sorted(self._channels)
        self._data.set()
        return channel

    def remove_channel(self, key_group: int) -> None:
        channel = self._channels.pop(key_group, None)
        if channel is not None:
            channel.close()
        self._blocked.discard(key_group)
        self._order = sorted(self._channels)
        self._data.set()

    @property
    def channels(self) -> frozenset[int]:
        return frozenset(self._channels)

    def block(self, key_group: int) -> None:
        self._blocked.add(key_group)

    def unblock_all(self) -> None:
        self._blocked.clear()
        self._data.set()

    async def next(self) -> tuple[int, ChannelElement]:
        """The next element of any unblocked channel, round-robin between channels."""
        while True:
            order = self._order
            n = len(order)
            for i in range(n):
                kg = order[(self._next + i) % n]
                if kg in self._blocked:
                    continue
                element = self._channels[kg].poll()
                if element is not None:
                    self._next = (self._next + i + 1) % max(n, 1)
                    return kg, element
            self._data.clear()
            await self._data.wait()
