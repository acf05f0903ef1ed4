"""--init_from: a trained model starts a run on another label set. Head rows move by class name or synonym (copied
exactly, every head paired by temperature), the other rows keep a fresh head's initialisation under the
run's seed, the backbone comes as it was trained; a COCO checkpoint starts a VOC run with 20 of 20 classes."""
import json

import pytest
import torch

import main as train_main
import trainer
from helpers import run_py, tiny_demo, train_argv
from pipeline.data.classes import COCO_CLASSES, VOC_CLASSES
from pipeline.models.model import CSRANet
from pipeline.weights.finetune import match_classes, normalise, shipped_pairs
from utils.configuration.config import Config


def built(argv):
    """The model main.py would train, right after it is built (seed first, as main.train does)."""
    cfg = Config.from_args(train_main.get_args([str(a) for a in argv]))
    torch.manual_seed(cfg.run.seed)
    return trainer.build(cfg, torch.device("cpu"), None)


def fresh_model(num_classes, num_heads, seed):
    torch.manual_seed(seed)
    return CSRANet("small_cnn", num_classes, num_heads=num_heads, img_size=32, pretrained="none")


def head_weight(model, k):
    return model.classifier.multi_head[k].head.weight.detach()


def save_trained(path, num_classes, num_heads, seed=11):
    """A 'trained' small_cnn checkpoint with recognisable weights (plain state dict: no run record beside it)."""
    model = fresh_model(num_classes, num_heads, seed)
    with torch.no_grad():
        for k in range(num_heads):
            w = model.classifier.multi_head[k].head.weight
            w.copy_(torch.arange(w.numel(), dtype=w.dtype).view_as(w) / w.numel() + k)
    torch.save(model.state_dict(), path)
    return model.state_dict()


def test_names_match_ignoring_case_spaces_underscores_and_hyphens():
    assert normalise("Dining_Table") == normalise("dining table") == normalise("dining-table") == "diningtable"
    got = match_classes(["TV-Monitor", "Potted_Plant", "unicorn", "Aeroplane"], ["airplane", "potted plant", "tv"],
                        shipped_pairs())
    assert got == [(2, "synonym"), (1, "name"), (None, "fresh"), (0, "synonym")]


def test_rows_move_by_name_and_synonym_in_every_head_and_the_rest_stay_fresh(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=8)
    old_names = ["circle", "square", "triangle", "cross", "ring", "bar"]
    ckpt = tmp_path / "old.pth"
    old = save_trained(ckpt, 6, num_heads=4)  # temperatures 1, 2, 4, inf
    (tmp_path / "old_classes.txt").write_text("\n".join(old_names))
    new_names = ["Ring", "kreuz", "hexagon", "SQUARE", "tri-angle", "circle"]
    (tmp_path / "new.txt").write_text("\n".join(new_names))
    (tmp_path / "syn.json").write_text(json.dumps({"kreuz": "cross"}))
    argv = train_argv(files, tmp_path / "run", "--classes", tmp_path / "new.txt", "--num_heads", "2",  # 1, inf
                      "--init_from", ckpt, "--init_classes", tmp_path / "old_classes.txt", "--class_map",
                      tmp_path / "syn.json", "--seed", "3")
    parts = built(argv)
    model, fresh = parts.model, fresh_model(6, 2, seed=3)
    taken = {0: 4, 1: 3, 3: 1, 4: 2, 5: 0}  # new class -> old class (hexagon, 2, has none)
    for k_new, k_old in ((0, 0), (1, 3)):   # T = 1 from T = 1, T = infinity from T = infinity
        w = head_weight(model, k_new)
        for new, old_c in taken.items():
            assert torch.equal(w[new], old[f"classifier.multi_head.{k_old}.head.weight"][old_c])
        assert torch.equal(w[2], head_weight(fresh, k_new)[2])
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in old.items() if not k.startswith("classifier."))
    assert parts.init.record() == {"from": str(ckpt), "by_name": 4, "by_synonym": 1, "fresh": 1, "heads": [2, 2],
                                   "synonyms": {"kreuz": "cross"}, "unmatched": ["hexagon"]}


def coco_to_voc_files(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=8)
    for split in ("train", "test"):
        records = json.loads(open(files[split]).read())
        for i, r in enumerate(records):
            r["target"] = [1 if (i + c) % 7 == 0 else 0 for c in range(20)]
        (tmp_path / f"{split}.json").write_text(json.dumps(records))
    (tmp_path / "classes.txt").write_text("\n".join(VOC_CLASSES))
    return {"train": str(tmp_path / "train.json"), "test": str(tmp_path / "test.json"),
            "classes": str(tmp_path / "classes.txt")}


def test_a_coco_checkpoint_starts_a_voc_run_with_every_class_matched(tmp_path, capsys):
    files = coco_to_voc_files(tmp_path)
    ckpt = tmp_path / "coco_small_cnn.pth"  # like the authors' release: a state dict without a record
    old = save_trained(ckpt, 80, num_heads=4)
    argv = train_argv(files, tmp_path / "run", "--init_from", ckpt, "--init_classes", "coco", "--total_epoch", "1")
    parts = built(argv)
    assert (parts.init.by_name, parts.init.by_synonym, parts.init.fresh) == (16, 4, 0)
    w = head_weight(parts.model, 0)
    for voc, coco in (("aeroplane", "airplane"), ("tvmonitor", "tv"), ("person", "person"),
                      ("diningtable", "dining table")):
        assert torch.equal(w[VOC_CLASSES.index(voc)], old["classifier.multi_head.0.head.weight"][COCO_CLASSES.index(coco)])
    capsys.readouterr()
    train_main.main([str(a) for a in argv])
    printed = " ".join(capsys.readouterr().out.split())  # (the header wraps its lines)
    assert "head rows for 20 of 20 classes (16 by name, 4 by synonym, 0 fresh), 1 of 1 heads" in printed
    record = json.loads((tmp_path / "run" / "args.json").read_text())
    assert record["init_from"] == str(ckpt) and record["init"]["synonyms"]["sofa"] == "couch"


def test_init_from_mistakes_are_one_line(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=8, num_test=8)
    ckpt = tmp_path / "old.pth"
    save_trained(ckpt, 6, num_heads=1)
    cases = [
        ([], "its class names are unknown (no run record beside it)"),
        (["--init_classes", "voc07"], "its head has 6 classes but 20 class names"),
        (["--init_classes", "nowhere.txt"], "neither a class-names file nor a dataset"),
        (["--init_classes", "coco", "--pretrained", "none"], "drop --pretrained"),
        (["--init_classes", "demo", "--model", "resnet18", "--pretrained", "none"], "drop --pretrained"),
        (["--init_classes", "demo", "--model", "resnet18"], "the checkpoint is a"),
    ]
    for extra, fragment in cases:
        r = run_py("main.py", *train_argv(files, tmp_path / "run", "--init_from", ckpt, *extra))
        assert r.returncode == 1 and fragment in r.stderr and "Traceback" not in r.stderr, (extra, r.stderr[-800:])
    r = run_py("main.py", *train_argv(files, tmp_path / "run", "--class_map", ckpt))
    assert r.returncode == 1 and "--class_map applies to --init_from" in r.stderr
