"""BioFact: the biographies of FActScore's 183 people (Min et al. 2023), split by person.

No hub repository serves them as data files. The loader reads either

- FActScore's release (``python -m factscore.download_data``): the folder holding
  ``labeled/*.jsonl`` (each line's ``topic`` is a person) and the Wikipedia dump
  ``enwiki-20230401.db`` (SQLite table ``documents(title, text)``, a page's passages
  joined by ``####SPECIAL####SEPARATOR####``); a person's biography is the first
  ``options.passages`` passages of their page; or
- a JSON Lines file ``options.file`` (default ``biofact.jsonl``) with ``name`` and ``bio``.

People are sorted by name and split at random (``options.seed``) into ``train``
(D_f is drawn from these) and ``test`` (``options.test_size``, never trained on).
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np

from mubench.errors import UserError

SEPARATOR = "####SPECIAL####SEPARATOR####"


def factscore_people(folder: Path, database: str, passages: int) -> list[dict]:
    """``name`` and ``bio`` of every person of FActScore's labelled prompts, from its Wikipedia dump."""
    names = sorted({json.loads(line)["topic"] for path in sorted((folder / "labeled").glob("*.jsonl"))
                    for line in path.read_text().splitlines() if line.strip()})
    db = folder / database
    if not db.is_file():
        raise UserError(f"FActScore release at {folder}: no Wikipedia dump {db.name} beside labeled/")
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        people, missing = [], []
        for name in names:
            row = connection.execute("SELECT text FROM documents WHERE title = ?", (name,)).fetchone()
            if row is None:
                missing.append(name)
                continue
            people.append({"name": name, "bio": " ".join(p.strip() for p in row[0].split(SEPARATOR)[:passages])})
    if missing:
        raise UserError(f"{db}: no page for {len(missing)} of FActScore's people (first: {missing[0]!r})")
    return people


def jsonl_people(path: Path) -> list[dict]:
    people = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            people.append({"name": str(row["name"]), "bio": str(row["bio"])})
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{path}:{number}: expected a JSON object with 'name' and 'bio' ({type(e).__name__}: {e})") from None
    return sorted(people, key=lambda person: person["name"])


def load_people(spec: dict):
    """BioFact's ``train`` and ``test`` people (see the module's docstring) from the ``--data-dir`` folder."""
    import datasets

    options = spec.get("options", {})
    folder = Path(spec["path"])
    if (folder / "labeled").is_dir():
        people = factscore_people(folder, options.get("wiki_db", "enwiki-20230401.db"), options.get("passages", 1))
    elif (folder / options.get("file", "biofact.jsonl")).is_file():
        people = jsonl_people(folder / options.get("file", "biofact.jsonl"))
    else:
        raise UserError(f"{folder}: neither FActScore's release (labeled/*.jsonl and its Wikipedia dump) "
                        f"nor {options.get('file', 'biofact.jsonl')}")
    if len(people) < 2:
        raise UserError(f"{folder}: BioFact needs at least two people, found {len(people)}")
    order = np.random.default_rng(options.get("seed", 0)).permutation(len(people))
    n_test = max(1, round(options.get("test_size", 0.2) * len(people)))
    features = datasets.Features({"name": datasets.Value("string"), "bio": datasets.Value("string")})
    split = lambda idx: datasets.Dataset.from_list([people[i] for i in sorted(idx)], features=features)  # noqa: E731
    return datasets.DatasetDict(train=split(order[n_test:]), test=split(order[:n_test]))


load_people.reads_data_dir = True
