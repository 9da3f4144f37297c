"""Train a VOS model: python train.py [model=mavos_mbv2] [data=synthetic] [trainer=gpu] [key=value ...]"""
import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from mavos.training.run import train

    metrics = train(cfg)
    if cfg.get("evaluate_after") and metrics.get("_checkpoint"):
        from mavos.evaluation.run import evaluate_from_training

        evaluate_from_training(cfg, metrics["_checkpoint"])
    value = metrics.get(cfg.get("optimized_metric") or "")
    return value


if __name__ == "__main__":
    main()
