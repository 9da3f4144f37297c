"""The demo's command line: ``key=value`` pairs (the style of train.py / evaluate.py overrides), checked."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

RESOLUTIONS = ("original", "720", "480", "360", "240", "161")


def project_root() -> Path:
    """Where weights/, logs/ and data/ live: $PROJECT_ROOT, else this repository."""
    env = os.environ.get("PROJECT_ROOT")
    return Path(env) if env else Path(__file__).resolve().parents[2]


@dataclass
class DemoSettings:
    """Everything the app is started with; the page lets each user choose the rest."""

    ckpt_path: str | None = None     # default checkpoint in the page (else the quick start's latest, else random)
    port: int = 7860
    host: str = "127.0.0.1"          # local only; put a reverse proxy in front to serve others
    device: str = "auto"             # auto: cuda when available
    resolution: str | None = None    # default inference short edge; None: 480 on a GPU, 240 on a CPU
    max_upload_mb: float = 200.0     # uploads above this are refused
    max_frames: int = 1000           # videos longer than this are refused
    max_jobs: int = 2                # runs at once over all browser sessions; more wait in the queue
    work_dir: str | None = None      # per-job output folders; default <tmp>/mavos_demo
    root: str = field(default_factory=lambda: str(project_root()))
    benchmark: dict = field(default_factory=dict)  # embedded benchmark generator settings (tests: a tiny one)

    def __post_init__(self) -> None:
        if self.resolution is not None and self.resolution not in RESOLUTIONS:
            raise ValueError(f"resolution={self.resolution!r}: choose from {', '.join(RESOLUTIONS)}")
        for name in ("max_upload_mb", "max_frames", "max_jobs"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= int(self.port) < 65536:
            raise ValueError(f"port={self.port}: not a TCP port")

    @property
    def jobs_dir(self) -> Path:
        return Path(self.work_dir) if self.work_dir else Path(tempfile.gettempdir()) / "mavos_demo"


USAGE = ("usage: python -m mavos.demo [key=value ...]\n  keys: " +
         ", ".join(f.name for f in fields(DemoSettings)) +
         "\n  e.g. python -m mavos.demo ckpt_path=weights/mavos_mbv2.ckpt port=7860")


def parse_args(argv: list[str]) -> DemoSettings:
    """``["ckpt_path=x.ckpt", "port=8000"]`` -> DemoSettings; a ValueError names a bad or unknown key."""
    types = {f.name: f.type for f in fields(DemoSettings)}
    values: dict[str, object] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ValueError(f"{arg!r}: expected key=value")
        if key not in types:
            raise ValueError(f"{key!r}: unknown setting")
        kind = types[key]
        if kind == "dict":
            raise ValueError(f"{key!r}: not settable from the command line")
        try:
            values[key] = int(value) if kind == "int" else float(value) if kind == "float" else (
                None if value in ("", "null", "None") and "None" in kind else value)
        except ValueError:
            raise ValueError(f"{key}={value!r}: expected a number") from None
    return DemoSettings(**values)
