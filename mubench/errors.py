"""The one error type users see: a single clear line, never a traceback."""
import difflib
import re


class UserError(Exception):
    """Bad input from the user (a name, a card, an argument); the CLI prints it as one line."""


def unknown_name(kind: str, name: str, known) -> UserError:
    """An error for an unknown task/method/model name, listing the known ones with a did-you-mean."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return UserError(f"unknown {kind} '{name}'.{hint} Known: {', '.join(known) or '(none)'}")


def key_path(parts) -> str:
    """``['deletion', 'ratios', 2]`` -> ``key 'deletion.ratios[2]'``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return f"key '{text}'" if text else "top level"


def problem_key(problem: str) -> str:
    """The card key a problem line names (``key 'train.epochs'`` -> ``train.epochs``), or '' where it names none."""
    return match.group(1) if (match := re.search(r"key '([^']*)'", problem)) else ""
