"""Where a newly assigned key group restores from, across every worker's checkpoints.

Each worker checkpoints into its own root, ``<checkpoint dir>/<worker id>/chk-<n>`` (ids are
per worker, so roots cannot collide). When Kafka assigns partition *p* to a worker, the state
of *p* may be in any worker's root (its previous owner's) or in the savepoint the worker was
started from. Each root is searched with
:class:`~metricsflow.checkpointing.recovery.CheckpointRecovery`, which skips torn or
incomplete checkpoints.

**Which candidate is newest.** Checkpoint ids of different workers are not comparable, and
neither are their wall clocks. A candidate is ranked by ``(generation, source offset)``:

* the **source offset** recorded for *p*: a partition's state is a deterministic function of
  the records before that offset, so within one lineage the higher offset is the newer state;
* the **restore generation** of *p* (checkpoint property ``key_group_generations``): starting
  a worker with ``--from-savepoint`` opens a new generation, one above every generation found
  in the cluster (or joins the newest one if that one was opened from the same savepoint, so
  that every worker of a deployment may carry the flag and a restart with the flag left in
  does not roll back twice). The savepoint then ranks above every checkpoint of older
  generations, whatever their offsets, and below the checkpoints the new run takes (same
  generation, any offset): Flink's meaning of "start from a savepoint". A key group inherits
  the generation of what it was restored from, and records it in every later checkpoint.

**Retention follows partitions** (:meth:`ClusterRecovery.superseded`, the coordinator's
``RetentionGuard``): a worker keeps the newest checkpoint holding a partition it handed over
until a checkpoint of that partition at least as new exists in another root.

**No silent empty start**: a partition for which the consumer group has committed an offset
(so some worker checkpointed it once) but for which no checkpoint is found refuses to start
(:class:`PartitionStateMissingError`), unless ``allow_empty_start``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import orjson

from metricsflow.checkpointing.metadata import CheckpointMetadata, verify_files
from metricsflow.checkpointing.recovery import CheckpointRecovery, KeyGroupRestore, RestorePlan
from metricsflow.checkpointing.savepoints import load_savepoint, savepoint_restore_plan
from metricsflow.checkpointing.storage import FsCheckpointStorage
from metricsflow.errors import CheckpointError, SerializationError
from metricsflow.sources.base import decode_offset

logger = logging.getLogger(__name__)

GENERATIONS_PROPERTY = "key_group_generations"
"""Checkpoint property: JSON ``{"<key group>": generation}``."""
RUN_GENERATION_PROPERTY = "run_generation"
RUN_SAVEPOINT_PROPERTY = "run_savepoint"
"""The savepoint (resolved path) the worker that took the checkpoint was started from."""


class PartitionStateMissingError(CheckpointError):
    """A partition that was checkpointed once has no checkpoint any more."""


def offset_of(metadata: CheckpointMetadata, source_uid: str, key_group: int) -> int:
    handles = metadata.operator_for(source_uid, key_group)
    if not handles:
        return -1
    try:
        return decode_offset(handles[0].data)
    except SerializationError:
        return -1


def generation_of(metadata: CheckpointMetadata, key_group: int) -> int:
    """The restore generation of ``key_group`` in ``metadata`` (0 before generations)."""
    text = metadata.properties.get(GENERATIONS_PROPERTY)
    if text:
        try:
            value = orjson.loads(text).get(str(key_group))
        except (orjson.JSONDecodeError, AttributeError):
            value = None
        if isinstance(value, int):
            return value
    try:
        return int(metadata.properties.get(RUN_GENERATION_PROPERTY, "0"))
    except ValueError:
        return 0


def _max_generation(metadata: CheckpointMetadata) -> int:
    best = generation_of(metadata, -1)
    text = metadata.properties.get(GENERATIONS_PROPERTY)
    if text:
        try:
            values = orjson.loads(text).values()
            best = max([best, *(v for v in values if isinstance(v, int))])
        except (orjson.JSONDecodeError, AttributeError):
            pass
    return best


class ClusterRecovery:
    """Plans restores from all worker roots under ``checkpoint_dir`` plus a savepoint."""

    def __init__(
        self,
        checkpoint_dir: Path,
        source_uid: str,
        *,
        own_root: Path | None = None,
        savepoint: str | None = None,
        allow_non_restored_state: bool = False,
        allow_empty_start: bool = False,
    ) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.source_uid = source_uid
        self.own_root = own_root
        self.savepoint = savepoint
        self.savepoint_id = str(Path(savepoint).resolve()) if savepoint else ""
        self.allow_non_restored_state = allow_non_restored_state
        self.allow_empty_start = allow_empty_start
        self.generations: dict[int, int] = {}
        """The restore generation of every key group planned (the job records them)."""
        self.refused: dict[int, int] = {}
        """Refused empty starts per partition (a metric)."""
        self.generation = self._run_generation()

    def roots(self) -> list[Path]:
        if not self.checkpoint_dir.is_dir():
            return []
        return sorted(p for p in self.checkpoint_dir.iterdir() if p.is_dir())

    def _all_checkpoints(self) -> list[CheckpointMetadata]:
        found: list[CheckpointMetadata] = []
        for root in self.roots():
            found.extend(CheckpointRecovery(FsCheckpointStorage(str(root))).valid_checkpoints())
        return found

    def _run_generation(self) -> int:
        """This run's generation (module docstring)."""
        checkpoints = self._all_checkpoints()
        newest = max((_max_generation(m) for m in checkpoints), default=0)
        if not self.savepoint:
            return newest
        saved, _storage = load_savepoint(self.savepoint, verify_checksums=False)
        newest = max(newest, _max_generation(saved))
        for meta in checkpoints:
            if (
                meta.properties.get(RUN_SAVEPOINT_PROPERTY) == self.savepoint_id
                and _max_generation(meta) == newest
            ):
                logger.info(
                    "joining the run already started from this savepoint generation=%d "
                    "savepoint=%s",
                    newest,
                    self.savepoint,
                )
                return newest
        logger.info(
            "starting a new generation from the savepoint generation=%d savepoint=%s",
            newest + 1,
            self.savepoint,
        )
        return newest + 1

    def properties(self, key_groups: Iterable[int]) -> dict[str, str]:
        """Checkpoint properties recording the generations of ``key_groups``."""
        gens = {str(kg): self.generations.get(kg, self.generation) for kg in sorted(key_groups)}
        return {
            GENERATIONS_PROPERTY: orjson.dumps(gens).decode(),
            RUN_GENERATION_PROPERTY: str(self.generation),
            RUN_SAVEPOINT_PROPERTY: self.savepoint_id,
        }

    def _rank(self, restore: KeyGroupRestore, generation: int) -> tuple[int, int]:
        return generation, offset_of(restore.metadata, self.source_uid, restore.key_group)

    def plan(
        self, key_groups: Iterable[int], committed: Mapping[int, int | None] | None = None
    ) -> RestorePlan:
        """Per key group the newest candidate (module docstring). ``committed`` maps a key
        group to the consumer group's committed offset (``None``: never committed); one with
        a committed offset and no candidate raises :class:`PartitionStateMissingError`."""
        wanted = sorted(set(key_groups))
        roots = self.roots()
        candidates: dict[int, list[tuple[tuple[int, int], int, KeyGroupRestore]]] = {
            kg: [] for kg in wanted
        }
        for root in roots:
            recovery = CheckpointRecovery(FsCheckpointStorage(str(root)))
            for kg in wanted:
                found = recovery.latest_for_key_group(kg)
                if found is not None:
                    gen = generation_of(found.metadata, kg)
                    candidates[kg].append((self._rank(found, gen), gen, found))
        if self.savepoint:
            plan = savepoint_restore_plan(
                self.savepoint, wanted, allow_non_restored_state=self.allow_non_restored_state
            )
            for kg, restore in plan.key_groups.items():
                candidates[kg].append(((self.generation, -1), self.generation, restore))
        chosen: dict[int, KeyGroupRestore] = {}
        missing: list[str] = []
        for kg, options in candidates.items():
            if not options:
                offset = (committed or {}).get(kg)
                if offset is not None and not self.allow_empty_start:
                    self.refused[kg] = self.refused.get(kg, 0) + 1
                    missing.append(f"partition {kg} (committed offset {offset})")
                self.generations[kg] = self.generation
                continue
            rank, gen, best = max(options, key=lambda o: o[0])
            chosen[kg] = best
            self.generations[kg] = gen
            logger.info(
                "key group restore chosen key_group=%d checkpoint_id=%d savepoint=%s "
                "generation=%d offset=%d candidates=%d",
                kg,
                best.metadata.checkpoint_id,
                best.metadata.is_savepoint,
                gen,
                rank[1],
                len(options),
            )
        if missing:
            searched = ", ".join(str(r) for r in roots) or f"(none under {self.checkpoint_dir})"
            raise PartitionStateMissingError(
                f"{'; '.join(missing)}: the consumer group committed an offset, so the state "
                f"was checkpointed once, but no valid checkpoint holds it (roots searched: "
                f"{searched}; savepoint: {self.savepoint or 'none'}). Refusing to start it "
                "empty; set METRICSFLOW_ALLOW_EMPTY_START=true to start it from nothing"
            )
        return RestorePlan(chosen, allow_non_restored_state=self.allow_non_restored_state)

    # -- RetentionGuard ----------------------------------------------------------------------
    def superseded(self, key_group: int, metadata: CheckpointMetadata) -> bool:
        """True when another root's newest valid checkpoint of ``key_group`` ranks at least
        as high as ``metadata``'s (retention follows partitions)."""
        rank = (
            generation_of(metadata, key_group),
            offset_of(metadata, self.source_uid, key_group),
        )
        for root in self.roots():
            if self.own_root is not None and root.resolve() == self.own_root.resolve():
                continue
            storage = FsCheckpointStorage(str(root))
            recovery = CheckpointRecovery(storage, verify_checksums=False)
            for checkpoint_id in recovery.checkpoint_ids():
                try:
                    meta = recovery.load(checkpoint_id)
                    if key_group not in meta.key_groups or meta.is_savepoint:
                        continue
                    verify_files(storage, meta, key_groups=[key_group], verify_checksums=False)
                except CheckpointError:
                    continue
                other = (
                    generation_of(meta, key_group),
                    offset_of(meta, self.source_uid, key_group),
                )
                if other >= rank:
                    return True
                break  # this root's newest holder is older
        return False
