"""DDI-2013 from its official XML release: every drug pair of every sentence, the negatives included."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

from mubench.errors import UserError
from mubench.files import atomic_path, mubench_home
from mubench.tasks.text import RelationClassificationTask, mark_spans

LABELS = ["NONE", "MECHANISM", "ADVISE", "EFFECT", "INT"]  # MU-Bench's order (DDI-false, mechanism, advise, effect, int)
SPLITS = {"train": ("Train",), "test": ("Test", "Test for DDI Extraction task")}


def load_ddi_xml(spec: dict):
    """The pair-level DDI Extraction 2013 splits, as the SemEval task defined them.

    Reads the release (``DDICorpus/Train/{DrugBank,MedLine}/*.xml`` and
    ``DDICorpus/Test/Test for DDI Extraction task/...``) from ``--data-dir`` (the
    folder that holds ``DDICorpus``, or ``DDICorpus`` itself), else from
    ``options.url`` (its zip), downloaded once (see :func:`downloaded`).
    Each ``<pair>`` is one example: ``label`` is its type (``NONE`` where ``ddi`` is
    false or untyped), ``marked`` its sentence with the two mentions marked
    ``<< … >>`` and ``[[ … ]]`` at their character offsets.
    """
    import datasets

    folder = Path(spec["path"]) if spec.get("path") else downloaded(spec["options"]["url"])
    root = folder / "DDICorpus" if (folder / "DDICorpus").is_dir() else folder
    features = datasets.Features({
        "pair_id": datasets.Value("string"), "document_id": datasets.Value("string"), "sentence": datasets.Value("string"),
        "drug1": datasets.Value("string"), "drug2": datasets.Value("string"), "marked": datasets.Value("string"),
        "label": datasets.ClassLabel(names=LABELS)})
    out = {}
    for split, parts in SPLITS.items():
        files = sorted(root.joinpath(*parts).glob("*/*.xml"))
        if not files:
            raise UserError(f"no DDI XML files under {root.joinpath(*parts)} (expected the DDICorpus-2013 release layout)")
        rows = [pair for path in files for pair in pairs(path)]
        out[split] = datasets.Dataset.from_list(rows, features=features)
    return datasets.DatasetDict(out)


load_ddi_xml.reads_data_dir = True


def downloaded(url: str) -> Path:
    """The zip at ``url``, downloaded and extracted once under ``$MUBENCH_HOME/downloads``; offline, one clear line."""
    folder = mubench_home() / "downloads" / hashlib.sha256(url.encode()).hexdigest()[:16]
    if (folder / "extracted").is_dir():
        return folder / "extracted"
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("", "0"):
        raise UserError(f"cannot download {url} in offline mode: download it yourself and pass its folder with --data-dir")
    folder.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=folder))
    try:
        with atomic_path(folder / "release.zip") as tmp:
            urllib.request.urlretrieve(url, tmp)
        with zipfile.ZipFile(folder / "release.zip") as archive:
            archive.extractall(scratch)
    except (OSError, zipfile.BadZipFile) as e:
        shutil.rmtree(scratch, ignore_errors=True)
        raise UserError(f"cannot download {url}: {e}") from None
    os.replace(scratch, folder / "extracted")
    (folder / "release.zip").unlink()
    return folder / "extracted"


def spans(offsets: str) -> list[tuple[int, int]]:
    """``"98-107;124-144"`` (inclusive ends, as the XML gives them) as ``[(98, 108), (124, 145)]``."""
    return [(int(a), int(b) + 1) for a, b in (part.split("-") for part in offsets.split(";"))]


def pairs(path: Path):
    """The pair rows of one XML document."""
    document = ET.parse(path).getroot()
    for sentence in document.iter("sentence"):
        text = sentence.get("text")
        entities = {e.get("id"): e for e in sentence.iter("entity")}
        for pair in sentence.iter("pair"):
            first, second = entities[pair.get("e1")], entities[pair.get("e2")]
            covering = [(s[0][0], s[-1][1]) for s in (spans(first.get("charOffset")), spans(second.get("charOffset")))]
            typed = pair.get("ddi") == "true" and pair.get("type")
            yield {"pair_id": pair.get("id"), "document_id": document.get("id"), "sentence": text,
                   "drug1": first.get("text"), "drug2": second.get("text"),
                   "marked": mark_spans(text, covering, RelationClassificationTask.markers),
                   "label": pair.get("type").upper() if typed else "NONE"}
