"""Time LlamaGen's own generate() next to ctfgen's baseline sampler, same config, one process.

LlamaGen is imported from a checkout given on the command line (nothing of it is copied here):

    python scripts/bench_llamagen_generate.py --llamagen /path/to/LlamaGen --config small
    python scripts/bench_llamagen_generate.py --llamagen /path/to/LlamaGen --config B --batch-size 8 --runs 1

Both models get random fp32 weights (random heads: both zero them at init), guidance 2.0 on a
doubled batch, temperature 1, top-k 0, top-p 1; runs alternate after a warm-up and the median is
reported with the ratio. Times cover token generation only (no VQ decoding) on both sides.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

CONFIGS = {
    # name: (n_layer, n_head, dim, vocab, classes, grid)
    "small": (8, 8, 256, 4096, 10, 8),
    "B": (12, 12, 768, 16384, 1000, 16),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llamagen", required=True, help="path of a LlamaGen checkout (holds autoregressive/)")
    p.add_argument("--config", default="small", choices=sorted(CONFIGS))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--cfg", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, args.llamagen)
    from autoregressive.models.generate import generate
    from autoregressive.models.gpt import ModelArgs, Transformer

    from ctfgen.models import build_model
    from ctfgen.sample import SamplingConfig, generate_tokens, sample_seed
    from ctfgen.sample.sampler import sample_uniforms

    n_layer, n_head, dim, vocab, classes, grid = CONFIGS[args.config]
    L = grid * grid
    torch.manual_seed(0)
    theirs = Transformer(ModelArgs(n_layer=n_layer, n_head=n_head, dim=dim, vocab_size=vocab, num_classes=classes,
                                   block_size=L, cls_token_num=1, model_type="c2i")).eval()
    ours = build_model("baseline", "tiny", vocab_size=vocab, num_classes=classes, grid=grid,
                       n_layer=n_layer, n_head=n_head, dim=dim).eval()
    with torch.no_grad():
        theirs.output.weight.normal_(0.0, 0.02)
        ours.output.weight.normal_(0.0, 0.02)
    B = args.batch_size
    cond = torch.arange(B) % classes

    def run_theirs():
        generate(theirs, cond, L, cfg_scale=args.cfg, temperature=1.0, top_k=0, top_p=1.0, sample_logits=True)

    def run_ours():
        u = sample_uniforms([sample_seed(0, i) for i in range(B)], L)
        generate_tokens(ours, cond, u, SamplingConfig.baseline(guidance_scale=args.cfg))
        ours.clear_cache()  # every call sets up its cache, as LlamaGen's generate() does

    times: dict[str, list[float]] = {"llamagen": [], "ctfgen": []}
    fns = {"llamagen": run_theirs, "ctfgen": run_ours}
    for r in range(args.warmup + args.runs):
        for name in (("llamagen", "ctfgen") if r % 2 == 0 else ("ctfgen", "llamagen")):
            t0 = time.perf_counter()
            fns[name]()
            dt = time.perf_counter() - t0
            print(f"round {r}{' (warm-up)' if r < args.warmup else ''}: {name} {dt:.2f} s", flush=True)
            if r >= args.warmup:
                times[name].append(dt)
    ips = {n: B / statistics.median(t) for n, t in times.items()}
    print(f"config {args.config} ({n_layer} layers, dim {dim}, vocab {vocab}, {L} tokens), batch {B}, cfg {args.cfg}, "
          f"cpu threads {torch.get_num_threads()}, median of {args.runs} after {args.warmup} warm-up")
    for n in ("llamagen", "ctfgen"):
        print(f"{n:<9} {ips[n]:8.3f} images/s   runs: {' '.join(f'{t:.2f}' for t in times[n])}")
    print(f"ratio ctfgen / llamagen: {ips['ctfgen'] / ips['llamagen']:.2f}x")


if __name__ == "__main__":
    main()
