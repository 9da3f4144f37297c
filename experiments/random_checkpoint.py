"""A checkpoint of a freshly initialised network, in the format evaluate.py loads: for timing the evaluation
pipeline where no trained weights are at hand (the scores it gives mean nothing).

    python experiments/random_checkpoint.py OUT.ckpt [MODEL]      # MODEL: a conf/model name, default mavos_mbv2
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mavos.checkpoints.loading import NETWORK_KEY, network_record  # noqa: E402
from mavos.data.io import atomic_save  # noqa: E402
from mavos.registry import ConfigError, build_network, network_config  # noqa: E402


def main(argv: list[str]) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="the checkpoint file to write (.ckpt)")
    ap.add_argument("model", nargs="?", default="mavos_mbv2", help="a conf/model name")
    args = ap.parse_args(argv)
    if args.out.is_dir():
        raise SystemExit(f"{args.out}: is a folder; give the checkpoint's file name")
    try:
        config = network_config(args.model)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    torch.manual_seed(0)
    net = build_network(config)
    ckpt = {"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            NETWORK_KEY: network_record(config, args.model)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(lambda tmp: torch.save(ckpt, tmp), args.out)
    print(f"{args.out}: {args.model} with random weights")
    return args.out


if __name__ == "__main__":
    main(sys.argv[1:])
