"""Evaluate a checkpoint: python evaluate.py ckpt_path=<ckpt> [data=davis2017 data.root=...] [model=...]

Writes palette PNGs to results_dir, global/per-sequence/speed CSVs, and prints J&F beside the
copy-first-frame baseline. score_only=true scores the PNGs already in results_dir.
"""
import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from mavos.evaluation.run import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    main()
