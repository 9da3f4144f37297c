"""A checkpoint of a freshly initialised network, in the format evaluate.py loads: for timing the evaluation
pipeline where no trained weights are at hand (the scores it gives mean nothing).

    python experiments/random_checkpoint.py OUT.ckpt [MODEL]      # MODEL: a conf/model name, default mavos_mbv2
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mavos.checkpoints.loading import NETWORK_KEY, network_record  # noqa: E402
from mavos.data.io import atomic_save  # noqa: E402
from mavos.registry import build_network, network_config  # noqa: E402


def main(argv: list[str]) -> None:
    if not 1 <= len(argv) <= 2:
        raise SystemExit(__doc__)
    out, model = Path(argv[0]), argv[1] if len(argv) > 1 else "mavos_mbv2"
    config = network_config(model)
    torch.manual_seed(0)
    net = build_network(config)
    ckpt = {"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            NETWORK_KEY: network_record(config, model)}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(lambda tmp: torch.save(ckpt, tmp), out)
    print(f"{out}: {model} with random weights")


if __name__ == "__main__":
    main(sys.argv[1:])
