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
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(args.device)
