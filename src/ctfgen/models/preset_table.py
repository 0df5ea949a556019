"""The model sizes by name, torch-free so that the command line offers them (`--preset`) at once;
presets.py builds models from them."""

# (n_layer, n_head, dim). B/L/XL/XXL/3B are the GPT sizes LlamaGen released (its 3B c2i model
# has head_dim 100); the paper's stage-2 model is L size ("aux-L", 343M in the paper) and its
# ablation uses a B-size one ("aux-B"). tiny and small are for the 32x32 Fashion-MNIST default
# (8x8 tokens) and train in minutes on a CPU.
PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=4, n_head=4, dim=128),
    "small": dict(n_layer=8, n_head=8, dim=256),
    "B": dict(n_layer=12, n_head=12, dim=768),
    "L": dict(n_layer=24, n_head=16, dim=1024),
    "XL": dict(n_layer=36, n_head=20, dim=1280),
    "XXL": dict(n_layer=48, n_head=24, dim=1536),
    "3B": dict(n_layer=24, n_head=32, dim=3200),
    "aux-B": dict(n_layer=12, n_head=12, dim=768),
    "aux-L": dict(n_layer=24, n_head=16, dim=1024),
}
# LlamaGen's own names (its GPT_models registry, the `gpt_model` its checkpoints record)
LLAMAGEN_NAMES = {"GPT-B": "B", "GPT-L": "L", "GPT-XL": "XL", "GPT-XXL": "XXL", "GPT-3B": "3B"}
# every name a `--preset` takes
PRESET_NAMES = (*PRESETS, *LLAMAGEN_NAMES)
