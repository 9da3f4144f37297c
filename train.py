"""Train a VOS model: python train.py [model=mavos_mbv2] [data=synthetic] [trainer=gpu] [key=value ...]
(python train.py --help for the common commands)."""
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))  # before Hydra resolves paths

from mavos.training.rundir import register_resolvers  # noqa: E402

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from mavos.errors import report_expected_errors
    from mavos.training.run import train

    def run():
        metrics = train(cfg)
        if cfg.get("evaluate_after") and metrics.get("_checkpoint"):
            from mavos.evaluation.run import evaluate_from_training

            evaluate_from_training(cfg, metrics["_checkpoint"])
        return metrics.get(cfg.get("optimized_metric") or "")

    return report_expected_errors(run, "train.py")


if __name__ == "__main__":
    main()
