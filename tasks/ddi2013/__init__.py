"""DDI-2013 from its official XML release: every drug pair of every sentence, the negatives included."""
from __future__ import annotations

from pathlib import Path

LABELS = ["NONE", "MECHANISM", "ADVISE", "EFFECT", "INT"]  # MU-Bench's order (DDI-false, mechanism, advise, effect, int)
SPLITS = {"train": ("Train",), "test": ("Test", "Test for DDI Extraction task")}


def load_ddi_xml(spec: dict):
    """The pair-level DDI Extraction 2013 splits, as the SemEval task defined them.

    Reads the release (``DDICorpus/Train/{DrugBank,MedLine}/*.xml`` and
    ``DDICorpus/Test/Test for DDI Extraction task/...``) from ``--data-dir`` (the
    folder that holds ``DDICorpus``, or ``DDICorpus`` itself), else downloads
    ``options.url`` (its zip) through ``datasets``' download manager and cache.
    Each ``<pair>`` is one example: ``label`` is its type (``NONE`` where ``ddi`` is
    false or untyped), ``marked`` its sentence with the two mentions marked
    ``<< … >>`` and ``[[ … ]]`` at their character offsets.
    """
    import datasets

    if spec.get("path"):
        folder = Path(spec["path"])
    else:
        try:
            folder = Path(datasets.DownloadManager().download_and_extract(spec["options"]["url"]))
        except (ConnectionError, OSError, ValueError) as e:
            from mubench.errors import UserError

            raise UserError(f"cannot download the DDI corpus from {spec['options']['url']}: {str(e).splitlines()[0]}") from None
    root = folder / "DDICorpus" if (folder / "DDICorpus").is_dir() else folder
    features = datasets.Features({
        "pair_id": datasets.Value("string"), "document_id": datasets.Value("string"), "sentence": datasets.Value("string"),
        "drug1": datasets.Value("string"), "drug2": datasets.Value("string"), "marked": datasets.Value("string"),
        "label": datasets.ClassLabel(names=LABELS)})
    out = {}
    for split, parts in SPLITS.items():
        files = sorted(root.joinpath(*parts).glob("*/*.xml"))
        if not files:
            from mubench.errors import UserError

            raise UserError(f"no DDI XML files under {root.joinpath(*parts)} (expected the DDICorpus-2013 release layout)")
        rows = [pair for path in files for pair in pairs(path)]
        out[split] = datasets.Dataset.from_list(rows, features=features)
    return datasets.DatasetDict(out)


load_ddi_xml.reads_data_dir = True


def spans(offsets: str) -> list[tuple[int, int]]:
    """``"98-107;124-144"`` (inclusive ends, as the XML gives them) as ``[(98, 108), (124, 145)]``."""
    return [(int(a), int(b) + 1) for a, b in (part.split("-") for part in offsets.split(";"))]


def pairs(path: Path):
    """The pair rows of one XML document."""
    import xml.etree.ElementTree as ET

    from mubench.tasks.text import RelationClassificationTask, mark_spans

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
