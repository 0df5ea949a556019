"""Write tests/fixtures/llamagen_gpt_tiny.safetensors: a tiny LlamaGen c2i GPT, its inputs and
its logits, computed by LlamaGen's own code, so the tests can check ctfgen's baseline against it
without LlamaGen installed.

    git clone https://github.com/FoundationVision/LlamaGen /tmp/LlamaGen   # never into this repo
    python scripts/make_llamagen_parity_fixture.py /tmp/LlamaGen

Stored: the state_dict (keys prefixed "sd."; values rounded to bf16 and stored so, which halves
the file and is exact, since the model ran on those rounded values in fp32), "tokens" (B, 15),
"cond" (B,), "logits" (B, 16, V) from the full forward in eval mode, and "cached_logits" from
LlamaGen's KV-cache path (prefill with the class, then one token at a time, teacher-forced).
The metadata holds the ctfgen config overrides that rebuild the same network.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ARGS = dict(dim=64, n_layer=2, n_head=4, vocab_size=64, num_classes=10, block_size=16, multiple_of=64)


def load_llamagen_gpt_module(root: Path):
    sys.path.insert(0, str(root))  # gpt.py imports utils.drop_path from the repo root
    spec = importlib.util.spec_from_file_location("llamagen_gpt", root / "autoregressive/models/gpt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def git_head(root: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("llamagen", type=Path, help="a checkout of FoundationVision/LlamaGen")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1]
                    / "tests/fixtures/llamagen_gpt_tiny.safetensors")
    ap.add_argument("--commit", help="LlamaGen commit to record, when the checkout is not a git work tree")
    args = ap.parse_args()
    lg = load_llamagen_gpt_module(args.llamagen)

    torch.manual_seed(0)
    model = lg.Transformer(lg.ModelArgs(**ARGS))
    with torch.no_grad():
        # LlamaGen zero-inits the head and ones-inits the norms; randomise them so they matter
        model.output.weight.normal_(0, 0.02)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    model.eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}  # before setup_caches adds buffers

    B, L = 3, ARGS["block_size"]
    tokens = torch.randint(0, ARGS["vocab_size"], (B, L - 1))
    cond = torch.tensor([3, 7, ARGS["num_classes"]])  # the last one is the null (CFG) class
    with torch.no_grad():
        logits, _ = model(tokens, cond, input_pos=torch.arange(L))
        model.setup_caches(max_batch_size=B, max_seq_length=L, dtype=torch.float32)
        steps = [model(None, cond, input_pos=torch.arange(1))[0][:, -1]]
        for i in range(L - 1):
            steps.append(model(tokens[:, i:i + 1], None, input_pos=torch.tensor([i + 1]))[0][:, -1])
        cached = torch.stack(steps, dim=1)
    print(f"LlamaGen full vs cached logits: max |diff| {(logits - cached).abs().max().item():.2e}")

    tensors = {f"sd.{k}": v.to(torch.bfloat16).contiguous() for k, v in weights.items()}
    tensors.update(tokens=tokens, cond=cond, logits=logits.contiguous(), cached_logits=cached.contiguous())
    commit = args.commit or git_head(args.llamagen)
    ctfgen_args = dict(n_layer=ARGS["n_layer"], n_head=ARGS["n_head"], dim=ARGS["dim"],
                       multiple_of=ARGS["multiple_of"], vocab_size=ARGS["vocab_size"],
                       num_classes=ARGS["num_classes"], grid=int(ARGS["block_size"] ** 0.5))
    meta = {"ctfgen_args": json.dumps(ctfgen_args), "llamagen_commit": commit,
            "torch": torch.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata=meta)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB), LlamaGen commit {commit}")


if __name__ == "__main__":
    main()
