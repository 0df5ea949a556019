"""Helpers shared by the sub-command modules."""
from __future__ import annotations

import argparse


def add_group(sub, name: str, help: str, description: str | None = None):
    """A command with its own sub-commands (`ctfgen tokenizer train`): returns their subparsers."""
    p = sub.add_parser(name, help=help, description=description or help)
    p.set_defaults(_group_parser=p)
    return p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")


def add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda if available)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")


def setup_device(args) -> "torch.device":  # noqa: F821
    import torch

    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    from ..train.dist import resolve_device

    return resolve_device(args.device)


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default="fashion-mnist", choices=["fashion-mnist", "idx", "folder", "npz"],
                   help="data source (default: the embedded Fashion-MNIST)")
    g.add_argument("--data-path", default=None, help="folder or file of the data (fashion-mnist: /usr/share/datasets/fashion-mnist)")
    g.add_argument("--resolution", type=int, default=None, help="image size (default: the tokenizer's)")
    g.add_argument("--channels", type=int, default=None, choices=[1, 3], help="1 grey, 3 RGB (default: the tokenizer's)")
    g.add_argument("--skip-bad", action="store_true", help="skip unreadable images (counted) instead of failing")


def data_config(args, *, default_resolution: int = 32, default_channels: int = 1):
    from ..data import DataConfig

    return DataConfig(source=args.data, path=args.data_path,
                      resolution=args.resolution or default_resolution,
                      channels=args.channels or default_channels, skip_bad=args.skip_bad)
