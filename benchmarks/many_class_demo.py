"""A many-class version of the demo data, for measuring what the class count does to training (the CSRA head at
1,000 classes and more) on a CPU in minutes.

    python benchmarks/many_class_demo.py [--num_cls 1000] [--out_dir data/demo_many]
    python tools/sweep.py --grid head_float32=on,off --seeds 0,1,2 --out sweeps/head_precision_many \\
        --baseline head_float32=on -- --dataset demo --train_json data/demo_many/train.json \\
        --test_json data/demo_many/test.json

The demo's images, with ``--num_cls`` classes made from its six shapes: class k is present when any shape of a
fixed random set of 1-3 shapes is (a seeded draw; the six single shapes come first). The labels follow from the
pixels as the demo's do, so a model learns them; many classes share a rule, which is fine for the purpose:
the head computes a row and a map per class, whatever the classes mean.
"""
from __future__ import annotations

import json
import os
import random

from pipeline.data.classes import DEMO_CLASSES
from utils.configuration.entry import ScriptParser, run_main
from utils.output.fileio import write_json_atomic
from utils.prepare.prepare_demo import ensure_demo_files


def class_rules(num_cls: int, seed: int = 0):
    """Each class's set of shapes: the six single shapes, then seeded random sets of 1-3."""
    rng = random.Random(seed)
    rules = [(i,) for i in range(len(DEMO_CLASSES))]
    while len(rules) < num_cls:
        rules.append(tuple(sorted(rng.sample(range(len(DEMO_CLASSES)), rng.randint(1, 3)))))
    return rules[:num_cls]


def main() -> None:
    p = ScriptParser(description=__doc__.splitlines()[0])
    p.add_argument("--num_cls", type=int, default=1000)
    p.add_argument("--out_dir", default="data/demo_many")
    p.add_argument("--demo_dir", default="data/demo")
    a = p.parse_args()
    ensure_demo_files(os.path.join(a.demo_dir, "train_demo.json"), os.path.join(a.demo_dir, "test_demo.json"))
    rules = class_rules(a.num_cls)
    names = ["+".join(DEMO_CLASSES[i] for i in rule) + f"#{k}" for k, rule in enumerate(rules)]
    for split in ("train", "test"):
        with open(os.path.join(a.demo_dir, f"{split}_demo.json")) as f:
            records = json.load(f)
        out = [{"img_path": os.path.abspath(r["img_path"]) if not os.path.isabs(r["img_path"]) else r["img_path"],
                "target": [int(any(r["target"][i] == 1 for i in rule)) for rule in rules]} for r in records]
        write_json_atomic(out, os.path.join(a.out_dir, f"{split}.json"))
    with open(os.path.join(a.out_dir, "classes.txt"), "w") as f:
        f.write("\n".join(names) + "\n")
    print(f"wrote {a.out_dir}/train.json, test.json and classes.txt: {a.num_cls} classes")


if __name__ == "__main__":
    run_main(main)
