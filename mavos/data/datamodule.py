"""One LightningDataModule for every benchmark: training clips from any mix of sets, videos for validation.

DDP: the training DataLoader is built with ``shuffle=True`` (or with our own epoch sampler when
``samples_per_epoch`` is set) and no distributed sampler. Keep the Trainer's
``use_distributed_sampler=True`` (the default): Lightning then shards it per rank, replacing a
plain shuffle by a ``DistributedSampler`` and wrapping :class:`EpochSampler` in its
``DistributedSamplerWrapper`` so each rank draws ``samples_per_epoch / world_size`` clips. The epoch
sampler draws from a generator seeded by (seed, epoch), so every rank materialises the same list
before sharding it.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import lightning as L
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, IterableDataset, Sampler

from mavos.data.clips import ClipConfig
from mavos.data.records import DatasetError, VideoRecord, select_videos


class TrainSet(Protocol):
    """Anything that turns a clip config into a dataset of clips (``VideoTrainSet``, ``StaticTrainSet``)."""

    def dataset(self, cfg: ClipConfig) -> Dataset: ...


class EpochSampler(Sampler[int]):
    """``num_samples`` indices drawn with replacement, re-drawn each epoch from (seed, epoch).

    Deterministic across processes, which Lightning's ``DistributedSamplerWrapper`` needs: every
    rank builds the same list and takes its own share.
    """

    def __init__(self, num_items: int, num_samples: int, seed: int = 0) -> None:
        if num_items < 1 or num_samples < 1:
            raise ValueError("num_items and num_samples must be >= 1")
        self.num_items = int(num_items)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randint(0, self.num_items, (self.num_samples,), generator=g).tolist()


NO_VIDEO = -1  # the validation index of a rank that has no video: its step segments nothing


class VideoIndices(IterableDataset):
    """This rank's share of the validation videos, as indices (whole videos are not batched).

    An IterableDataset so Lightning injects no DistributedSampler (which pads by repeating videos): every video
    is scored exactly once; ranks may get different numbers of videos (nothing synchronises per step).
    """

    def __init__(self, indices: list[int]):
        self.indices = list(indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def panel_count(count: int, world: int, wanted: int) -> int:
    """How many of the first videos rank 0 keeps for the dashboard panels (at most its fair share)."""
    return min(wanted, count, -(-count // max(world, 1)))


def shard_videos(count: int, rank: int, world: int, panels: int = 0) -> list[int]:
    """Video indices of one rank: the first ``panel_count`` videos (dashboard panels, logged by rank 0) on rank 0,
    every other video to the rank holding the fewest so far (each video once; the same on every rank)."""
    first = panel_count(count, world, panels)
    shards: list[list[int]] = [list(range(first)) if r == 0 else [] for r in range(world)]
    for index in range(first, count):
        min(shards, key=len).append(index)
    return shards[rank]


class VOSDataModule(L.LightningDataModule):
    """Training clips from ``train_sets`` (concatenated) and videos for evaluation and validation.

    ``val_reader`` lists the split evaluate.py runs on; validation during training segments
    ``train_val_reader`` (default: ``val_reader``; server-scored sets name a local subset with ground truth),
    bounded by ``val_videos`` (None: all; a count: the first N; a list of names) and ``val_max_frames``.
    ``prepare`` is an optional callable run once per node in ``prepare_data`` (e.g.
    :class:`mavos.data.synthetic.SyntheticPrepare` generates the embedded benchmark on first use).
    Readers and train sets touch the disk only when asked for videos, i.e. after ``prepare_data``.
    """

    def __init__(
        self,
        train_sets: list[TrainSet] | None = None,
        val_reader: Any = None,
        clip: ClipConfig | dict | None = None,
        batch_size: int = 4,
        num_workers: int = 2,
        samples_per_epoch: int | None = None,
        seed: int = 0,
        prepare: Callable[[], Any] | None = None,
        train_val_reader: Any = None,
        val_videos: int | list[str] | None = None,
        val_max_frames: int | None = None,
        panel_videos: int = 2,
    ) -> None:
        super().__init__()
        self.train_sets = list(train_sets or [])
        self.val_reader = val_reader
        self.clip = ClipConfig.from_any(clip)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.samples_per_epoch = samples_per_epoch
        self.seed = int(seed)
        self.prepare = prepare
        self.train_val_reader = train_val_reader
        self.val_videos_choice = val_videos
        self.val_max_frames = val_max_frames
        self.panel_videos = int(panel_videos)
        self._train_dataset: Dataset | None = None
        self._validation: list[VideoRecord] | None = None
        self.panel_indices: set[int] = set()  # the validation videos whose panels rank 0 logs

    def prepare_data(self) -> None:
        if self.prepare is not None:
            self.prepare()

    def train_dataset(self) -> Dataset:
        """All train sets as one dataset (built once, after ``prepare_data``)."""
        if self._train_dataset is None:
            if not self.train_sets:
                raise ValueError("VOSDataModule has no train_sets: nothing to train on")
            parts = [s.dataset(self.clip) for s in self.train_sets]
            self._train_dataset = parts[0] if len(parts) == 1 else ConcatDataset(parts)
        return self._train_dataset

    def train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset()
        sampler = None
        if self.samples_per_epoch:
            sampler = EpochSampler(len(dataset), self.samples_per_epoch, seed=self.seed)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def val_videos(self) -> list[VideoRecord]:
        """The videos of the evaluation split (evaluate.py streams them one by one)."""
        return [] if self.val_reader is None else self.val_reader.videos()

    @property
    def validates(self) -> bool:
        """Whether training validates at all (a reader and not ``val_videos=0``)."""
        reader = self.train_val_reader if self.train_val_reader is not None else self.val_reader
        return reader is not None and self.val_videos_choice != 0

    def validation_videos(self) -> list[VideoRecord]:
        """The bounded subset validated during training (built once, after ``prepare_data``)."""
        if self._validation is None:
            reader = self.train_val_reader if self.train_val_reader is not None else self.val_reader
            if reader is None:
                raise DatasetError("this data config has no videos to validate on (no val_reader); set "
                                   "data.val_videos=0 to train without validation")
            records = reader.videos()
            self._validation = select_videos(records, self.val_videos_choice, self.val_max_frames,
                                             source=f"data.val_videos ({_describe(reader)})")
        return self._validation

    def val_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        indices = shard_videos(len(self.validation_videos()), rank, world, self.panel_videos)
        self.panel_indices = set(range(panel_count(len(self.validation_videos()), world, self.panel_videos)))
        # A rank without a video (fewer videos than ranks) still runs one validation step, on NO_VIDEO: DDP
        # broadcasts its buffers at the first forward after training, and every rank must take part in it.
        return DataLoader(VideoIndices(indices or [NO_VIDEO]), batch_size=None, num_workers=0)


def _describe(reader: Any) -> str:
    root = getattr(reader, "root", None)
    split = getattr(reader, "split", None)
    return f"{type(reader).__name__}" + (f" at {root}" if root is not None else "") + (f", split {split}" if split else "")
