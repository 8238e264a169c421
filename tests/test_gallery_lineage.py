"""The gallery page carries each artifact's chain (ancestors, children) for the lightbox."""

from __future__ import annotations

import json
import re


def test_gallery_items_carry_lineage(run_cli, workspace):
    from echo_os.gallery.build import build_gallery

    home = str(workspace.home)
    code, out, err = run_cli("--home", home, "render", "a harbour", "--engine", "draft", "--size", "64x64",
                             "--seed", "1", "--no-memory", "--json")
    assert code == 0, err
    root = json.loads(out)[0]["id"]
    code, out, err = run_cli("--home", home, "replay", root, "--save", "--json")  # a child of root
    child = json.loads(out)["saved_id"]
    code, out, err = run_cli("--home", home, "replay", child, "--save", "--json")  # a grandchild
    grandchild = json.loads(out)["saved_id"]
    page = build_gallery(workspace).page.read_text(encoding="utf-8")
    data = re.search(r'<script type="application/json" id="gallery-data">(.*?)</script>', page, re.S).group(1)
    items = {item["id"]: item for item in json.loads(data.replace("<\\/", "</"))}
    assert items[grandchild]["lineage"] == [root, child] and items[grandchild]["children"] == []
    assert items[child]["lineage"] == [root] and items[child]["children"] == [grandchild]
    assert items[root]["lineage"] == [] and items[root]["children"] == [child]
    assert 'class: "lineage"' in page
