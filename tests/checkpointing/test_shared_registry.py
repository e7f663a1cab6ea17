"""SharedStateRegistry: shared files live exactly as long as a retained checkpoint needs them."""

from __future__ import annotations

from metricsflow.checkpointing.shared_registry import SharedStateRegistry
from metricsflow.state.handles import KeyGroupStateHandle, StreamStateHandle


def handle(key_group: int, *shared: str) -> KeyGroupStateHandle:
    return KeyGroupStateHandle(
        key_group=key_group,
        backend="rocksdb",
        format_version=1,
        shared=tuple(StreamStateHandle(p, 1, p) for p in shared),
    )


def test_file_is_released_only_when_its_last_checkpoint_is_released() -> None:
    registry = SharedStateRegistry()
    registry.register(1, [handle(0, "shared/a", "shared/b")])
    registry.register(2, [handle(0, "shared/b", "shared/c")])

    assert [h.path for h in registry.release(1)] == ["shared/a"]
    assert registry.reference_count("shared/b") == 1
    assert sorted(h.path for h in registry.release(2)) == ["shared/b", "shared/c"]
    assert registry.referenced_paths() == frozenset()


def test_a_checkpoint_counts_a_file_once_even_across_registrations() -> None:
    registry = SharedStateRegistry()
    registry.register(1, [handle(0, "shared/a"), handle(1, "shared/a")])
    registry.register(1, [handle(2, "shared/a")])

    assert registry.reference_count("shared/a") == 1
    assert [h.path for h in registry.release(1)] == ["shared/a"]


def test_releasing_an_unknown_checkpoint_returns_nothing() -> None:
    assert SharedStateRegistry().release(99) == []


def test_rebuilt_registry_matches_the_one_built_incrementally() -> None:
    retained = {3: [handle(0, "shared/a", "shared/b")], 4: [handle(0, "shared/b")]}

    registry = SharedStateRegistry.rebuild(retained)

    assert registry.checkpoints() == frozenset({3, 4})
    assert registry.reference_count("shared/b") == 2
    assert [h.path for h in registry.release(3)] == ["shared/a"]
