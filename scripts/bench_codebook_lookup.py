"""Seconds per image of `VQModel.encode_codes` with the nearest-codeword search in row chunks
(`VectorQuantizer.LOOKUP_ROWS`, the default) against one whole (positions x V) score table.

Both run in this one process on the same inputs, alternating (chunked, whole, whole, chunked, ...),
so machine load hits both alike; read the ratio. The codes must be identical, and are checked.

    python3 scripts/bench_codebook_lookup.py --tokenizer runs/demo/tokenizer --n 2560 --reps 3 --threads 2

Without --tokenizer a freshly initialised model of the `fmnist` preset is used (same shapes).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder (default: an untrained fmnist-preset model)")
    ap.add_argument("--n", type=int, default=2560, help="images per timing")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from ctfgen.tokenizer import VQModel, load_tokenizer, vq_preset
    from ctfgen.tokenizer.model import VectorQuantizer

    tok = load_tokenizer(args.tokenizer, "cpu") if args.tokenizer else VQModel(vq_preset("fmnist"))
    tok.eval()
    c = tok.config
    x = torch.rand(args.n, c.channels, c.resolution, c.resolution, generator=torch.Generator().manual_seed(0)) * 2 - 1
    chunk_rows = VectorQuantizer.LOOKUP_ROWS
    positions = args.batch_size * c.grid * c.grid

    def run(rows: int) -> tuple[float, torch.Tensor]:
        VectorQuantizer.LOOKUP_ROWS = rows
        t = time.perf_counter()
        with torch.inference_mode():
            codes = torch.cat([tok.encode_codes(b) for b in x.split(args.batch_size)])
        return time.perf_counter() - t, codes

    run(chunk_rows), run(positions)  # warm-up
    times: dict[str, list[float]] = {"chunked": [], "whole": []}
    ref = None
    for r in range(args.reps):
        for name in (("chunked", "whole") if r % 2 == 0 else ("whole", "chunked")):
            s, codes = run(chunk_rows if name == "chunked" else positions)
            if ref is None:
                ref = codes
            elif not torch.equal(codes, ref):
                raise SystemExit("the two searches gave different codes")
            times[name].append(s)
    VectorQuantizer.LOOKUP_ROWS = chunk_rows
    ms = {k: 1e3 * statistics.median(v) / args.n for k, v in times.items()}
    print(f"codebook V={c.codebook_size} dim={c.codebook_dim}, grid {c.grid}x{c.grid}, batch {args.batch_size}, "
          f"{args.n} images, {args.threads} thread(s), median of {args.reps}")
    print(f"chunked ({chunk_rows} rows): {ms['chunked']:.2f} ms/image")
    print(f"whole table ({positions} rows): {ms['whole']:.2f} ms/image")
    print(f"time ratio chunked/whole: {ms['chunked'] / ms['whole']:.2f}")


if __name__ == "__main__":
    main()
