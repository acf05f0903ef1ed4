"""List the backbone table: name, parameters, feature width, default input normalisation and where
the ImageNet weights come from (``--markdown``: as the README's table).

    python tools/list_backbones.py [--markdown] [timm/<name> ...]
"""
from __future__ import annotations


from pipeline.models.backbones import BACKBONES, TIMM_PREFIX, Backbone, get_backbone
from pipeline.models.runtime import normalization_name
from utils.configuration.entry import ScriptParser, run_main


def row(spec: Backbone) -> list:
    normalize = "by dataset (the authors' rule)" if spec.authors else normalization_name(spec.normalization)
    if spec.provider == "timm":
        from pipeline.models.timm_backbones import hub_id
        source = hub_id(spec)
    else:
        source = f"torchvision {spec.weights.__class__.__name__}.{spec.weights.name} ({spec.weights_file})" \
            if spec.weights is not None else "none (trained from scratch)"
    count = spec.num_params
    if count is None:
        import torch
        with torch.device("meta"):
            count = sum(p.numel() for p in spec.create(spec.img_size or 224).parameters())
    params = f"{count / 1e6:.1f}M"
    return [spec.name, spec.display, params, str(spec.feat_dim), normalize, source]


def main(argv=None) -> None:
    p = ScriptParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", help=f"{TIMM_PREFIX}<name> models to list too")
    p.add_argument("--markdown", action="store_true", help="a Markdown table")
    a = p.parse_args(argv)
    rows = [row(spec) for spec in BACKBONES.values()] + [row(get_backbone(m)) for m in a.models]
    head = ["--model", "backbone", "parameters", "feature width", "default --normalize", "ImageNet weights"]
    if a.markdown:
        print("| " + " | ".join(head) + " |\n| " + " | ".join("---" for _ in head) + " |")
        for r in rows:
            print("| " + " | ".join([f"`{r[0]}`"] + r[1:]) + " |")
        return
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    for r in [head] + rows:
        print("  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip())


if __name__ == "__main__":
    run_main(main)
