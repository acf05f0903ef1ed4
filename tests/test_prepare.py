"""Preparation scripts against tiny raw datasets built here, with labels derived by hand."""
import json
import os

import pytest
from PIL import Image

from conftest import SHARED_SAMPLES, needs_voc_samples
from helpers import run_in_process
from pipeline.data.classes import VOC_CLASSES, WIDER_ATTRIBUTES

VOC = {c: i for i, c in enumerate(VOC_CLASSES)}


def run_script(name, *args, cwd=None):
    return run_in_process(os.path.join("utils", "prepare", name), *args, cwd=cwd)


def write_xml(path, objects):
    body = "".join(f"<object><name>{n}</name><difficult>{int(d)}</difficult></object>" for n, d in objects)
    with open(path, "w") as f:
        f.write(f"<annotation><filename>x.jpg</filename>{body}</annotation>")


def make_voc(root, year="2007", annotations=None, splits=None):
    voc = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for image_id, objects in annotations.items():
        write_xml(voc / "Annotations" / f"{image_id}.xml", objects)
        Image.new("RGB", (8, 8)).save(voc / "JPEGImages" / f"{image_id}.jpg")
    for split, ids in splits.items():
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root / "VOCdevkit"


VOC_ANN = {
    # two dogs (one difficult) and a difficult-only person
    "000001": [("dog", False), ("dog", True), ("person", True)],
    # several cars, one chair that is only difficult, a bottle
    "000002": [("car", False), ("car", False), ("chair", True), ("bottle", False)],
    "000003": [("cat", False)],
    "000004": [("person", False), ("person", True), ("horse", False)],
}


def expected(objects, binary):
    t = [-1] * 20
    for name, diff in objects:
        c = VOC[name]
        if not diff:
            t[c] = 1
        elif t[c] == -1:
            t[c] = 0
    # by hand: binary trainval keeps only non-difficult presence
    return [1 if v == 1 else 0 for v in t] if binary else t


def test_voc2007_labels(tmp_path):
    devkit = make_voc(tmp_path, annotations=VOC_ANN,
                      splits={"train": ["000001"], "val": ["000002"], "test": ["000003", "000004", "000002"]})
    out = tmp_path / "out"
    r = run_script("prepare_voc.py", "--data_path", str(devkit), "--out_dir", str(out))
    assert r.returncode == 0, r.stderr
    trainval = json.loads((out / "trainval_voc07.json").read_text())
    test = json.loads((out / "test_voc07.json").read_text())
    assert [os.path.basename(r["img_path"]) for r in trainval] == ["000001.jpg", "000002.jpg"]
    # hand-derived: 000001 -> dog 1 (one non-difficult dog), person difficult-only -> 0 in trainval
    t1 = [0] * 20
    t1[VOC["dog"]] = 1
    assert trainval[0]["target"] == t1
    t2_test = [-1] * 20
    t2_test[VOC["car"]], t2_test[VOC["bottle"]], t2_test[VOC["chair"]] = 1, 1, 0
    assert test[2]["target"] == t2_test
    assert test[1]["target"] == expected(VOC_ANN["000004"], binary=False)
    assert test[1]["target"][VOC["person"]] == 1
    assert "positives per class" in r.stdout and "wrote" in r.stdout


def test_voc2012_test_list_without_labels(tmp_path):
    devkit = make_voc(tmp_path, year="2012", annotations=VOC_ANN,
                      splits={"train": ["000001", "000002"], "val": ["000003"], "test": ["000004"]})
    out = tmp_path / "out"
    r = run_script("prepare_voc.py", "--data_path", str(devkit), "--year", "2012", "--out_dir", str(out))
    assert r.returncode == 0, r.stderr
    test = json.loads((out / "test_voc12.json").read_text())
    assert test == [{"img_path": str(devkit / "VOC2012" / "JPEGImages" / "000004.jpg")}]
    assert len(json.loads((out / "trainval_voc12.json").read_text())) == 3


@pytest.mark.parametrize("breakage,needle", [
    ("unknown_class", "unknown class name 'dragon'"),
    ("bad_xml", "000002.xml: unreadable annotation"),
    ("empty_split", "val.txt: empty split"),
    ("missing_folder", "Annotations: no such folder"),
])
def test_voc_errors_name_the_file_and_leave_no_json(tmp_path, breakage, needle):
    devkit = make_voc(tmp_path, annotations=VOC_ANN,
                      splits={"train": ["000001"], "val": ["000002"], "test": ["000003"]})
    voc = devkit / "VOC2007"
    if breakage == "unknown_class":
        write_xml(voc / "Annotations" / "000002.xml", [("dragon", False)])
    elif breakage == "bad_xml":
        (voc / "Annotations" / "000002.xml").write_text("<annotation><object>")
    elif breakage == "empty_split":
        (voc / "ImageSets" / "Main" / "val.txt").write_text("")
    else:
        import shutil
        shutil.rmtree(voc / "Annotations")
    out = tmp_path / "out"
    r = run_script("prepare_voc.py", "--data_path", str(devkit), "--out_dir", str(out))
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]  # earlier lines are the progress bar
    assert last.startswith("error: ") and needle in last
    assert not out.exists() or not any(p.suffix == ".json" for p in out.iterdir())


def make_coco(root):
    (root / "annotations").mkdir(parents=True)
    cats = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 90, "name": "toothbrush"}]
    for split in ("train", "val"):
        (root / "images" / f"{split}2014").mkdir(parents=True)
        images = [{"id": i, "file_name": f"{split}_{i}.jpg", "width": 8, "height": 8} for i in (5, 2, 9)]
        for im in images:
            (root / "images" / f"{split}2014" / im["file_name"]).write_bytes(b"")  # present (not read here)
        anns = [
            {"id": 1, "image_id": 5, "category_id": 3, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 3, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 90, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 1},
        ]  # image 9 has no annotation
        (root / "annotations" / f"instances_{split}2014.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def test_coco_labels_and_empty_images(tmp_path):
    coco = make_coco(tmp_path / "COCO2014")
    out = tmp_path / "out"
    r = run_script("prepare_coco.py", "--data_path", str(coco), "--out_dir", str(out))
    assert r.returncode == 0, r.stderr
    val = json.loads((out / "val_coco2014.json").read_text())
    # sorted by image id; image 9 (no annotation) left out; classes in id order person, car, toothbrush
    assert [os.path.basename(r["img_path"]) for r in val] == ["val_2.jpg", "val_5.jpg"]
    assert [r["target"] for r in val] == [[1, 0, 1], [0, 1, 0]]
    r = run_script("prepare_coco.py", "--data_path", str(coco), "--out_dir", str(out), "--keep_empty", "--force")
    val = json.loads((out / "val_coco2014.json").read_text())
    assert val[2]["target"] == [0, 0, 0] and val[2]["img_path"].endswith("val_9.jpg")


def test_coco_stops_on_a_listed_image_that_is_missing(tmp_path):
    coco = make_coco(tmp_path / "COCO2014")
    os.remove(coco / "images" / "val2014" / "val_5.jpg")
    os.remove(coco / "images" / "val2014" / "val_9.jpg")  # no annotation: left out, so not needed
    r = run_script("prepare_coco.py", "--data_path", str(coco), "--out_dir", str(tmp_path / "out"))
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and last.startswith("error: ") and "val_5.jpg: image listed in" in last
    assert "(1 of its 2 images are not in" in last
    assert not (tmp_path / "out" / "val_coco2014.json").exists()


def test_coco_malformed_annotation(tmp_path):
    coco = make_coco(tmp_path / "COCO2014")
    (coco / "annotations" / "instances_train2014.json").write_text("{not json")
    r = run_script("prepare_coco.py", "--data_path", str(coco), "--out_dir", str(tmp_path / "out"))
    assert r.returncode == 1 and "instances_train2014.json: not valid JSON" in r.stderr


def test_wider_labels(tmp_path):
    root = tmp_path / "WIDER_ATTRIBUTE"
    (root / "Anno").mkdir(parents=True)
    (root / "Image").mkdir()
    a = [1, -1, 0, 1, -1, 0, 0, 1, 1, -1, -1, 0, 1, -1]
    b = [-1] * 14
    for split in ("trainval", "test"):
        data = {"images": [{"file_name": f"{split}/0--Parade/x.jpg",
                            "targets": [{"bbox": [1, 2, 30, 40], "attribute": a},
                                        {"bbox": [5, 5, 10, 10], "attribute": b}]}]}
        (root / "Anno" / f"wider_attribute_{split}.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    r = run_script("prepare_wider.py", "--data_path", str(root), "--out_dir", str(out))
    assert r.returncode == 0, r.stderr
    trainval = json.loads((out / "trainval_wider.json").read_text())
    test = json.loads((out / "test_wider.json").read_text())
    assert trainval[0]["target"] == [1, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0]
    assert test[0]["target"] == [1, 0, 99, 1, 0, 99, 99, 1, 1, 0, 0, 99, 1, 0]
    assert test[1]["target"] == [0] * 14 and test[0]["bbox"] == [1, 2, 30, 40]
    assert len(WIDER_ATTRIBUTES) == 14


def test_custom_csv_with_split(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    lines = ["image,labels"]
    for i in range(10):
        Image.new("RGB", (8, 8)).save(imgs / f"{i}.jpg")
        lines.append(f"{i}.jpg,{'cat;dog' if i % 2 else 'dog'}" if i != 9 else "9.jpg,")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    r = run_script("prepare_custom.py", "--img_dir", str(imgs), "--labels", str(tmp_path / "labels.csv"),
                   "--out_dir", str(out), "--test_split", "0.3", "--seed", "1")
    assert r.returncode == 0, r.stderr
    train = json.loads((out / "train.json").read_text())
    test = json.loads((out / "test.json").read_text())
    assert len(train) == 7 and len(test) == 3
    assert (out / "classes.txt").read_text().split() == ["cat", "dog"]
    by_name = {os.path.basename(r["img_path"]): r["target"] for r in train + test}
    assert by_name["1.jpg"] == [1, 1] and by_name["2.jpg"] == [0, 1] and by_name["9.jpg"] == [0, 0]


def test_custom_errors(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (tmp_path / "labels.json").write_text(json.dumps({"missing.jpg": ["cat"]}))
    r = run_script("prepare_custom.py", "--img_dir", str(imgs), "--labels", str(tmp_path / "labels.json"),
                   "--out_dir", str(tmp_path / "out"))
    assert r.returncode == 1 and "image 'missing.jpg' not found" in r.stderr


def test_demo_generator_is_deterministic(tmp_path):
    from utils.prepare.prepare_demo import generate_demo
    a = generate_demo(str(tmp_path / "a"), num_train=20, num_test=5, seed=3, quiet=True)
    b = generate_demo(str(tmp_path / "b"), num_train=20, num_test=5, seed=3, quiet=True)
    ra = json.loads(open(a["train"]).read())
    rb = json.loads(open(b["train"]).read())
    assert [r["target"] for r in ra] == [r["target"] for r in rb]
    assert all(1 <= sum(r["target"]) <= 4 for r in ra)
    with open(ra[0]["img_path"], "rb") as fa, open(rb[0]["img_path"], "rb") as fb:
        assert fa.read() == fb.read()


@needs_voc_samples
def test_real_voc_samples(tmp_path):
    """A VOCdevkit built from the six real images and their labels (no difficult flags known)."""
    meta = json.loads(open(os.path.join(SHARED_SAMPLES, "labels.json")).read())
    annotations = {os.path.splitext(k)[0]: [(n, False) for n in v] for k, v in meta["images"].items()}
    devkit = make_voc(tmp_path, annotations=annotations,
                      splits={"train": list(annotations)[:3], "val": list(annotations)[3:4],
                              "test": list(annotations)[4:]})
    for image_id in annotations:  # replace the placeholders with the real JPEGs
        Image.open(os.path.join(SHARED_SAMPLES, image_id + ".jpg")).save(
            devkit / "VOC2007" / "JPEGImages" / f"{image_id}.jpg")
    out = tmp_path / "out"
    r = run_script("prepare_voc.py", "--data_path", str(devkit), "--out_dir", str(out))
    assert r.returncode == 0, r.stderr
    records = json.loads((out / "trainval_voc07.json").read_text()) + json.loads((out / "test_voc07.json").read_text())
    for rec in records:
        names = meta["images"][os.path.basename(rec["img_path"])]
        assert [VOC_CLASSES[i] for i, v in enumerate(rec["target"]) if v == 1] == sorted(names, key=VOC.get)
