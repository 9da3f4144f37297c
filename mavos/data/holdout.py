"""A validation slice held out of a training split, for benchmarks whose val split is scored by a server.

YouTube-VOS ``valid`` has first-frame masks only; to see a J&F while training, ``HeldOutReader(part="holdout")``
validates on ``count`` videos of ``train`` (spread evenly over the sorted list) and ``HeldOutReader(part="rest")``
trains on the others, so no validation video is ever trained on. The same ``count`` gives the same split.
"""
from __future__ import annotations

from typing import Any

from mavos.data.records import DatasetError, VideoRecord


class HeldOutReader:
    def __init__(self, reader: Any, count: int, part: str = "holdout"):
        if part not in ("holdout", "rest"):
            raise ValueError(f"part must be 'holdout' or 'rest', got {part!r}")
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self.reader, self.count, self.part = reader, int(count), part
        self.root = getattr(reader, "root", None)
        self.split = f"{getattr(reader, 'split', '?')} ({part} of {count})"
        self.name = f"{getattr(reader, 'name', type(reader).__name__)}_{part}"

    def __repr__(self) -> str:
        return f"HeldOutReader({self.reader!r}, count={self.count}, part={self.part!r})"

    def held_out_names(self, names: list[str]) -> set[str]:
        """``count`` names spread evenly over the sorted list (all of them when it is shorter)."""
        ordered = sorted(names)
        n = len(ordered)
        if n <= self.count:
            return set(ordered)
        return {ordered[(i * n) // self.count] for i in range(self.count)}

    def videos(self) -> list[VideoRecord]:
        records = self.reader.videos()
        held = self.held_out_names([r.name for r in records])
        if self.part == "rest" and len(held) == len(records):
            raise DatasetError(f"{self.root or self.reader!r}: all {len(records)} {getattr(self.reader, 'split', '')} "
                               f"videos are held out for validation (data.holdout_videos={self.count}), none is left "
                               f"to train on; set data.holdout_videos below {len(records)}")
        keep = (lambda r: r.name in held) if self.part == "holdout" else (lambda r: r.name not in held)
        return [r for r in records if keep(r)]
