"""``python -m mavos.demo [ckpt_path=...] [port=7860] [max_upload_mb=200] [max_frames=1000] ...``"""
from __future__ import annotations

import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local demo
    from mavos.demo.settings import USAGE, parse_args

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    try:
        settings = parse_args(argv)
    except ValueError as e:
        print(f"mavos.demo: {e}\n{USAGE}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from mavos.demo.app import launch

    print(f"mavos demo: http://{settings.host}:{settings.port} (project root {settings.root})", flush=True)
    _, board = launch(settings)
    board.close_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
