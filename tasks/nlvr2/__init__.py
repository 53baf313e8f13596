"""NLVR2 from its official release layout: annotation JSON lines and the image folders beside them."""
from __future__ import annotations

import json
from pathlib import Path

from mubench.data import read_source
from mubench.errors import UserError

FIELDS = ("identifier", "sentence", "label", "left_url", "right_url")


def load_nlvr2_release(spec: dict):
    """The release's splits (``options.files``: split -> JSON-lines file) with ``left_image`` and ``right_image``.

    The folder (``--data-dir``) holds the annotation files (``train.json``,
    ``dev.json``, as in the release's ``nlvr2/data``) and the images anywhere below
    it (``images/train/<n>/``, ``dev/``, …): pair ``train-10171-0-0`` shows
    ``train-10171-0-img0.png`` and ``…-img1.png``. A folder without the annotation
    files is read by ``datasets`` instead (a ``save_to_disk`` copy with the image columns).
    """
    import datasets

    folder = Path(spec["path"])
    files = spec.get("options", {}).get("files", {})
    if not files or not all((folder / name).is_file() for name in files.values()):
        return read_source(spec)
    images = {path.name: str(path) for path in folder.rglob("*.png")}
    features = datasets.Features({name: datasets.Value("string") for name in FIELDS}
                                 | {"left_image": datasets.Image(), "right_image": datasets.Image()})
    out = {}
    for split, name in files.items():
        rows = {key: [] for key in features}
        for line in (folder / name).read_text().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            stem = record["identifier"].rsplit("-", 1)[0]
            for side, key in ((0, "left_image"), (1, "right_image")):
                image = images.get(f"{stem}-img{side}.png")
                if image is None:
                    raise UserError(f"NLVR2 {name}: no image {stem}-img{side}.png under {folder}")
                rows[key].append(image)
            for key in FIELDS:
                rows[key].append(str(record.get(key, "")))
        out[split] = datasets.Dataset.from_dict(rows, features=features)
    return datasets.DatasetDict(out)


load_nlvr2_release.reads_data_dir = True
