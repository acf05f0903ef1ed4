"""Write a checkpoint in another layout, so one model runs here, in the authors' code and in the
model-zoo toolbox.

    python tools/convert_checkpoint.py --load_from best.pth --to authors --out csra_authors.pth
    python tools/convert_checkpoint.py --load_from their_vit.pth --to ours --out vit_ours.pth
    python tools/convert_checkpoint.py --load_from best.pth --to zoo --out csra_zoo.pth

Layouts: ``ours`` is a plain state dict with the provider's backbone keys (torchvision's or timm's) and
the authors' head keys; ``authors`` is the same for ResNets and, for ViTs, the timm-style names of the
authors' ViT-CSRA (their code has no other backbone: other checkpoints are refused in one line);
``zoo`` is ``{"state_dict": {"backbone.<key>", "head.csra_heads.<k>.head.weight"}, "meta": {...}}``.
Any layout val.py reads is accepted as input (also DataParallel's ``module.`` and our training
states). Tensors are copied unchanged; the output is written atomically and never replaces an
existing file without ``--force``.
"""
from __future__ import annotations

import os

from utils.configuration.entry import ScriptParser

from pipeline.errors import CheckpointError
from pipeline.models.backbones import get_backbone
from pipeline.weights.checkpoint import checkpoint_contents, rename_vit, safe_load, to_authors_layout, to_zoo_layout
from utils.configuration.cli import run_main
from utils.output.fileio import OutputError, save_torch_atomic
from utils.runs.run_record import find_record

LAYOUTS = ("ours", "authors", "zoo")


def convert(load_from: str, to: str) -> object:
    """The checkpoint at ``load_from`` in layout ``to``."""
    found = find_record(load_from)
    record = found[1] if found else {}
    sd = to_authors_layout(safe_load(load_from), load_from, record.get("model"))
    info = checkpoint_contents(sd, expected_model=record.get("model"))
    if info["model"] is None:
        raise CheckpointError(f"{load_from}: its backbone is not one this code knows; cannot convert it")
    if info["head"] is None:
        raise CheckpointError(f"{load_from}: no classifier weights (no classifier.* or fc.* keys)")
    if to == "ours":
        return sd
    if to == "authors":
        spec = get_backbone(info["model"])
        if not spec.authors:
            raise CheckpointError(f"{load_from}: the authors' code has no {spec.display} backbone (only ResNets and "
                                  "ViTs), so it has no layout for it; --to ours or --to zoo")
        return rename_vit(sd, "to_timm") if spec.family == "vit" else sd
    meta = {"model": info["model"], "head": info["head"], "num_heads": info["num_heads"],
            "num_classes": info["num_classes"], "converted_from": os.path.basename(load_from)}
    # a model trained here: what its run record says travels in the toolbox's meta
    meta.update({k: record[k] for k in ("lam", "img_size", "normalize", "class_names") if record.get(k) is not None})
    return to_zoo_layout(sd, meta=meta)


def main(argv=None) -> None:
    p = ScriptParser(description=__doc__)
    p.add_argument("--load_from", required=True, help="a checkpoint in any layout val.py accepts")
    p.add_argument("--to", required=True, choices=LAYOUTS)
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    a = p.parse_args(argv)
    if os.path.exists(a.out) and not a.force:
        raise OutputError(f"{a.out}: exists; pass --force to replace it")
    obj = convert(a.load_from, a.to)
    save_torch_atomic(obj, a.out)
    sd = obj["state_dict"] if a.to == "zoo" else obj
    print(f"wrote {a.out}: {len(sd)} tensors in the {a.to} layout")


if __name__ == "__main__":
    run_main(main)
