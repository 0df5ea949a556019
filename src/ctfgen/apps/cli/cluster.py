"""`ctfgen cluster`: tokenizer codebook -> coarse-label map (artifact kind "coarse_map")."""
from __future__ import annotations

import argparse
import textwrap
import time

from ...cluster import METHODS as CLUSTER_METHODS
from ...cluster.options import LINKAGES
from ._util import int_range, positive_int, seed_int

ORDER = 40
# The paper clusters LlamaGen's 16384 codes into 512 coarse labels; a default K keeps that ratio, so a
# smaller codebook does not get clusters of a handful of codes (512 of a 4096-code book: 8 each).
CODES_PER_CLUSTER = 16384 // 512

DESCRIPTION = """Cluster the tokenizer's codebook vectors into K groups. A code's cluster is its coarse
label (predicted by stage 1); its codebook index is its fine label (predicted by stage 2).
Writes a folder with coarse_map.safetensors and manifest.json recording the tokenizer it was
made from, so later steps refuse codes of another tokenizer."""

def register(sub) -> None:
    p = sub.add_parser(
        "cluster",
        help="cluster the codebook into K coarse labels",
        description=DESCRIPTION,
        epilog="\n".join(textwrap.fill(f"{name}: {m.help}.", 100, subsequent_indent="  ")
                         for name, m in CLUSTER_METHODS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer artifact folder (from `ctfgen tokenizer`)")
    p.add_argument("--k", type=int_range(2), default=None,
                   help=f"number of coarse labels K, 2 <= K <= codebook size (default: the codebook size / {CODES_PER_CLUSTER}, "
                        f"the paper's ratio of 16384 codes to 512 labels; 128 for the fmnist tokenizer's 4096 codes)")
    p.add_argument(
        "--method", default="kmeans", choices=CLUSTER_METHODS,
        help="how to group the codewords (see below; default kmeans)",
    )
    p.add_argument("--raw", action="store_true", help="cluster the raw codewords instead of L2-normalised ones")
    p.add_argument("--seed", type=seed_int, default=0, help="random seed; the same seed gives the same map (default 0)")
    p.add_argument("--max-iter", type=positive_int, default=None, help=_option_help("max_iter", "Lloyd iterations"))
    p.add_argument("--neighbors", type=positive_int, default=None,
                   help=_option_help("n_neighbors", "neighbours per codeword in the graph"))
    p.add_argument("--linkage", default=None, choices=LINKAGES,
                   help=_option_help("linkage", "merge criterion (the others than ward tend to chain into one giant "
                                                "cluster)"))
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the coarse map to")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    p.set_defaults(func=run)


def default_k(codebook_size: int) -> int:
    """K when --k is not given: codebook_size / CODES_PER_CLUSTER, at least 2."""
    return max(2, codebook_size // CODES_PER_CLUSTER)


# the flags of the methods' options (cluster/options.py METHODS)
OPTION_FLAGS = {"max_iter": "--max-iter", "n_neighbors": "--neighbors", "linkage": "--linkage"}


def _users(option: str) -> dict:
    """{method: its default} of the methods that take `option`."""
    return {name: m.options[option] for name, m in CLUSTER_METHODS.items() if option in m.options}


def _option_help(option: str, what: str) -> str:
    return f"{what}, for " + " or ".join(f"{m} (default {v})" for m, v in _users(option).items())


def _method_options(args) -> dict:
    from ...errors import CtfgenError

    opts = {}
    for name, flag in OPTION_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            if args.method not in _users(name):
                users = " and ".join(_users(name))
                raise CtfgenError(f"{flag} applies to the {users} method{'s' if len(_users(name)) > 1 else ''}, "
                                  f"not {args.method}")
            opts[name] = value
    return opts


def run(args) -> int:
    from pathlib import Path

    from ...cluster import build_coarse_map, load_codebook
    from ...errors import CtfgenError

    # Fail before the (possibly slow) clustering rather than after it.
    if Path(args.out).exists() and not args.overwrite:
        raise CtfgenError(f"{args.out} already exists; choose another folder or pass --overwrite")
    codebook_VD, tok_fp = load_codebook(args.tokenizer)
    k = args.k or default_k(codebook_VD.shape[0])
    start = time.perf_counter()
    cmap = build_coarse_map(
        codebook_VD, k, method=args.method, seed=args.seed, normalize=not args.raw,
        tokenizer_fingerprint=tok_fp, **_method_options(args),
    )
    seconds = time.perf_counter() - start
    out = cmap.save(args.out, overwrite=args.overwrite, info={"seconds": round(seconds, 3)})
    sizes = cmap.sizes()
    print(f"codebook: {cmap.num_codes} codes x {codebook_VD.shape[1]} dims ({'raw' if args.raw else 'L2-normalised'})")
    print(f"K={cmap.k}{'' if args.k else f' (codebook size / {CODES_PER_CLUSTER})'} method={cmap.method} seed={cmap.seed}")
    print(f"cluster sizes: min {sizes['min']}  mean {sizes['mean']:.1f}  max {sizes['max']}")
    print(f"time: {seconds:.2f} s")
    print(f"saved: {out} (fingerprint {cmap.fingerprint})")
    return 0
