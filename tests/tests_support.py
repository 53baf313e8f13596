"""Helpers the tests share."""
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def digits_card_dict() -> dict:
    """The built-in digits card as a mapping, to derive test cards from."""
    return yaml.safe_load((REPO / "tasks" / "digits" / "digits.yaml").read_text())
