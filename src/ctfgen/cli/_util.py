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


def add_config_flags(p: argparse.ArgumentParser, cls, helps: dict[str, str], *, skip: tuple[str, ...] = ("data",)) -> None:
    """One --flag per field of the dataclass `cls` (defaults and types from the class itself)."""
    from dataclasses import fields

    defaults = cls()
    for f in fields(cls):
        if f.name in skip:
            continue
        value = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        help = f"{helps[f.name]} (default: {value if value != '' else 'none'})"
        if isinstance(value, bool):
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=value, metavar="BOOL", help=help)
        else:
            p.add_argument(flag, type=type(value), default=value, help=help)


def config_from_args(cls, args, *, skip: tuple[str, ...] = ("data",), **extra):
    from dataclasses import fields

    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if f.name not in skip}, **extra)
