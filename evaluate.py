"""Evaluate a checkpoint: python evaluate.py ckpt_path=<ckpt> [data=davis2017 data.root=...]
(python evaluate.py --help for the common commands).

Writes palette PNGs to results_dir, the toolkit's CSVs, speed and a summary, and prints J&F beside the
copy-first-frame baseline. score_only=true scores the PNGs already in results_dir.
"""
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))  # before Hydra resolves paths


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from mavos.errors import report_expected_errors
    from mavos.evaluation.run import evaluate

    report_expected_errors(lambda: evaluate(cfg), "evaluate.py")


if __name__ == "__main__":
    main()
