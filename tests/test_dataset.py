"""Loading prepared JSON: conventions, re-rooting, bad input, transforms."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.dataset import (DataError, ImageReading, ImageTransform, MultiLabelDataset, collate_skipping_bad,
                                   load_records)
from pipeline.models.runtime import normalization, to_model_input


def write(path, obj):
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return str(path)


def make_images(folder, n=3, size=(40, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{i:06d}.jpg"
        Image.new("RGB", size, (10 * i, 20, 30)).save(p)
        paths.append(str(p))
    return paths


def test_authors_json_loads_unchanged(tmp_path):
    paths = make_images(tmp_path / "JPEGImages")
    recs = [{"img_path": p, "target": [1, -1, 0]} for p in paths]
    ds = MultiLabelDataset(write(tmp_path / "test_voc07.json", recs), ImageTransform(32, train=False), 3)
    img, target, path, idx = ds[1]
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32)
    assert target.tolist() == [1, -1, 0] and path == paths[1] and idx == 1
    assert ds.targets().shape == (3, 3)


@pytest.mark.parametrize("content,needle", [
    ("{not json", "not valid JSON"),
    ('{"img_path": "a.jpg"}', "expected a JSON list of records"),
    ("[]", "holds no records"),
    ('[{"img_path": "a.jpg", "target": [1, 0]}, {"img_path": "b.jpg", "target": [1]}]',
     "record 1 (b.jpg) has 1 labels, --num_cls is 2"),
    ('[{"target": [1, 0]}]', "record 0 is not an object with a string 'img_path'"),
    ('[{"img_path": "a.jpg", "target": ["1", 0]}]', "target must be a list of integers"),
])
def test_bad_json_files(tmp_path, content, needle):
    path = write(tmp_path / "bad.json", content)
    with pytest.raises(DataError) as e:
        load_records(path, num_classes=2)
    assert needle in str(e.value) and path in str(e.value)


def test_missing_json_file(tmp_path):
    with pytest.raises(DataError, match="no such JSON file"):
        load_records(str(tmp_path / "absent.json"))


def test_missing_and_corrupt_images_name_file_and_record(tmp_path):
    paths = make_images(tmp_path / "imgs", 2)
    corrupt = tmp_path / "imgs" / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    recs = [{"img_path": paths[0], "target": [1]}, {"img_path": str(corrupt), "target": [0]},
            {"img_path": str(tmp_path / "gone.jpg"), "target": [1]}]
    json_path = write(tmp_path / "d.json", recs)
    ds = MultiLabelDataset(json_path, ImageTransform(16, train=False), 1)
    with pytest.raises(DataError, match=r"corrupt.jpg \(record 1 of .*d.json\): cannot read image"):
        ds[1]
    with pytest.raises(DataError, match=r"gone.jpg \(record 2 of"):
        ds[2]
    skipping = MultiLabelDataset(json_path, ImageTransform(16, train=False), 1, reading=ImageReading(skip_bad=True))
    with pytest.warns(UserWarning, match="skipped"):
        batch, skipped = collate_skipping_bad([skipping[0], skipping[1], skipping[2]])
    assert skipped == 2 and batch[0].shape == (1, 3, 16, 16) and batch[2] == [paths[0]]


def test_reroot_replaces_foreign_prefix(tmp_path):
    paths = make_images(tmp_path / "new_home" / "VOCdevkit" / "VOC2007" / "JPEGImages", 2)
    recs = [{"img_path": f"/mnt/someone/else/Dataset/VOCdevkit/VOC2007/JPEGImages/{os.path.basename(p)}",
             "target": [1]} for p in paths]
    json_path = write(tmp_path / "d.json", recs)
    with pytest.raises(DataError):
        MultiLabelDataset(json_path, ImageTransform(8, train=False), 1)[0]
    ds = MultiLabelDataset(json_path, ImageTransform(8, train=False), 1, data_root=str(tmp_path / "new_home"))
    assert ds.records[1]["img_path"] == paths[1]
    ds[1]
    with pytest.raises(DataError, match="no tail of record 0's path"):
        MultiLabelDataset(json_path, ImageTransform(8, train=False), 1, data_root=str(tmp_path / "nowhere"))


def test_relative_paths_fall_back_to_json_folder(tmp_path, monkeypatch):
    make_images(tmp_path / "images", 1)
    json_path = write(tmp_path / "d.json", [{"img_path": "images/000000.jpg", "target": [1]}])
    monkeypatch.chdir(tmp_path.parent)
    ds = MultiLabelDataset(json_path, ImageTransform(8, train=False), 1)
    assert ds.records[0]["img_path"] == str(tmp_path / "images" / "000000.jpg")


def test_wider_bbox_crop(tmp_path):
    img = Image.new("RGB", (100, 80), (0, 0, 255))
    img.paste((255, 0, 0), (20, 10, 50, 70))  # the person: x 20..50, y 10..70
    p = tmp_path / "w.png"
    img.save(p)
    recs = [{"img_path": str(p), "target": [1, 99], "bbox": [20, 10, 30, 60]}]
    ds = MultiLabelDataset(write(tmp_path / "w.json", recs), ImageTransform(16, train=False), 2)
    crop = ds.load_image(0)
    assert crop.size == (30, 60)
    arr = np.asarray(crop)
    assert (arr[..., 0] == 255).all() and (arr[..., 2] == 0).all()


def test_train_transform_is_a_function_of_the_seed(tmp_path):
    paths = make_images(tmp_path / "imgs", 1, size=(90, 60))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(paths[0])
    ds = MultiLabelDataset(write(tmp_path / "d.json", [{"img_path": paths[0], "target": [1]}]),
                           ImageTransform(32, train=True), 1)
    a, b, c = ds[(0, 7)][0], ds[(0, 7)][0], ds[(0, 8)][0]
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)


def test_named_normalisations():
    images = torch.tensor([[[[0, 255]]] * 3], dtype=torch.uint8)  # (1, 3, 1, 2)
    mean, std = normalization("unit")
    x = to_model_input(images, mean, std, torch.device("cpu"))
    assert x.dtype == torch.float32 and x.flatten().tolist() == [0.0, 1.0] * 3
    mean, std = normalization("half")
    x = to_model_input(images, mean, std, torch.device("cpu"))
    assert x.flatten().tolist() == [-1.0, 1.0] * 3
    mean, std = normalization("imagenet")
    x = to_model_input(images, mean, std, torch.device("cpu"))
    want = [(v - m) / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) for v in (0.0, 1.0)]
    assert np.allclose(x.flatten().tolist(), want)
