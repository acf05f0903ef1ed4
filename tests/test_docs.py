"""What a researcher looks for: the licence, the citation of the paper and of this code, and the authors'
checkpoints under the names the README's commands use."""
import os
import re

import pytest

from conftest import ROOT


def read(name: str) -> str:
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else len(text)]


def test_every_checkpoint_name_in_the_table_is_one_a_readme_command_uses():
    readme = read("README.md")
    table = section(readme, "## Paper, checkpoints, citation and licence")
    rows = [ln.split("|")[1:-1] for ln in table.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    named = [re.findall(r"`([\w.]+\.pth)`", cells[2]) for cells in rows]
    assert [n for names in named for n in names] == ["voc07_resnet101.pth", "coco_resnet101.pth",
                                                     "CutMix_ResNet101.pth"]
    elsewhere = readme.replace(table, "")
    for name in ("voc07_resnet101.pth", "coco_resnet101.pth"):
        assert re.search(rf"^python val\.py .*--load_from {re.escape(name)}", elsewhere, re.M), name
    assert re.search(r"^python main\.py .*--cutmix CutMix_ResNet101\.pth", elsewhere, re.M)
    assert "https://arxiv.org/abs/2108.02456" in table and "https://github.com/Kevinz-code/CSRA" in table


def test_citation_file_and_readme_cite_the_same_paper():
    yaml = pytest.importorskip("yaml")
    cff = yaml.safe_load(read("CITATION.cff"))
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["license"] == "MIT"
    paper = cff["references"][0]
    bibtex = re.search(r"```bibtex\n(.*?)```", read("README.md"), re.S).group(1)
    field = lambda key: re.search(rf"^\s*{key}\s*=\s*\{{(.*)\}},?$", bibtex, re.M).group(1)  # noqa: E731
    assert field("title") == paper["title"] == ("Residual Attention: A Simple but Effective Method for "
                                                "Multi-Label Recognition")
    assert field("author") == " and ".join(f"{a['family-names']}, {a['given-names']}" for a in paper["authors"]) \
        == "Zhu, Ke and Wu, Jianxin"
    assert int(field("year")) == paper["year"] == 2021
    assert paper["url"] == field("url") == f"https://arxiv.org/abs/{field('eprint')}"
    assert paper["repository-code"] == "https://github.com/Kevinz-code/CSRA"


def test_the_licence_is_mit_with_the_readmes_holder():
    licence = read("LICENSE")
    assert licence.startswith("MIT License\n\nCopyright (c) 2026 the CSRA reference codebase authors\n")
    assert "copyright 2026 the CSRA reference codebase authors" in read("README.md")
