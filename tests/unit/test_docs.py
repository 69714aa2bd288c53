"""Every message a user may see has a row (or a line) in docs/troubleshooting.md.

The messages are read from the source with ``ast``: the reasons of ``Rejected(...)``, the
messages of raised project errors, reject reasons recorded without an exception, and warning or
error logs. Each is cut to its stable leading text: the literal part before the first
placeholder (``{...}`` in an f-string, ``%s`` in a log format, a written ``...``), up to the
first clause break, at most a few words. A message that starts with a placeholder (a path, a
number) is keyed on its first literal part that holds at least two words.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from anomaly_ae import errors

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(ROOT / "anomaly_ae").rglob("*.py"), *(ROOT / "flows").rglob("*.py")])
ERRORS = {name for name, c in vars(errors).items() if isinstance(c, type) and issubclass(c, errors.AnomalyAEError)} | {
    "Rejected"}
LOGGERS = {"log", "logger"}
LOG_LEVELS = {"warning", "error", "exception", "critical"}
REASON_NAMES = {"reason", "reject_reason"}
MAX_WORDS = 5
# Where a message's stable leading text ends, when the text before it has at least two words.
CLAUSE_BREAK = re.compile(r"\. |; |: |\? | \(|\.$|\n")
PERCENT_PLACEHOLDER = re.compile(r"%[-+ #0-9.]*[sdifgerx%]")
# Trimmed from a key's ends: punctuation, quotes, and brackets left open or closed by a cut.
LSTRIP = " \t\n.,;:'\"`)]"
RSTRIP = " \t\n.,;:'\"`(["


def troubleshooting_section() -> str:
    """docs/troubleshooting.md from its first heading to the end."""
    text = (ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    return _normalise(text[text.index("# "):])


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _name(node: ast.AST) -> str | None:
    """The called name: ``DataError`` for ``DataError(...)`` and ``errors.DataError(...)``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _literal_parts(node: ast.AST, percent: bool = False) -> list[str] | None:
    """The literal pieces of a message expression, split at every placeholder; None when none."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        pieces = [node.value]
    elif isinstance(node, ast.JoinedStr):  # an f-string: a placeholder between constant parts
        pieces, current = [], ""
        for value in node.values:
            if isinstance(value, ast.Constant):
                current += value.value
            else:
                pieces.append(current)
                current = ""
        pieces.append(current)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):  # "a " + f"{b}"
        left, right = _literal_parts(node.left, percent), _literal_parts(node.right, percent)
        if left is None or right is None:
            return left or right
        return left[:-1] + [left[-1] + right[0]] + right[1:]
    else:
        return None
    out = []
    for piece in pieces:
        if percent:
            out.extend(PERCENT_PLACEHOLDER.split(piece))
        else:
            out.append(piece)
    return [p for piece in out for p in piece.split("...")]


def _key(piece: str) -> str | None:
    """The stable leading text of one literal piece, or None when it is too short to be one."""
    piece = _trim(piece)
    for m in CLAUSE_BREAK.finditer(piece):
        head = _trim(piece[: m.start()])
        if len(head.split()) >= 2:
            piece = head
            break
    words = piece.split()[:MAX_WORDS]
    key = _trim(" ".join(words))
    return key if len(key.split()) >= 2 else None


def _trim(text: str) -> str:
    return text.lstrip(LSTRIP).rstrip(RSTRIP)


def message_key(node: ast.AST, percent: bool = False) -> str | None:
    """The stable leading text of a message expression: its first literal piece with two words."""
    for piece in _literal_parts(node, percent) or []:
        key = _key(piece)
        if key:
            return key
    return None


def _messages(tree: ast.AST):
    """(line, kind, message expression, percent-formatted) for every user-facing message."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
            if _name(node.exc.func) in ERRORS:
                yield node.lineno, _name(node.exc.func), node.exc.args[0], False
        elif isinstance(node, ast.Call):
            func = node.func
            if (isinstance(func, ast.Attribute) and func.attr in LOG_LEVELS
                    and _name(func.value) in LOGGERS and node.args):
                yield node.lineno, f"{_name(func.value)}.{func.attr}", node.args[0], True
            elif _name(func) == "Decoded" and len(node.args) >= 8:  # a reject without an exception
                yield node.lineno, "reject reason", node.args[7], False
            for kw in node.keywords:
                if kw.arg in REASON_NAMES:
                    yield node.lineno, "reject reason", kw.value, False
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in REASON_NAMES
                                                  for t in node.targets):
            for value in ast.walk(node.value):  # reason = other or "text"
                if isinstance(value, ast.JoinedStr) or (isinstance(value, ast.Constant)
                                                        and isinstance(value.value, str)):
                    yield node.lineno, "reject reason", value, False


# Messages with no literal text of two words, and why each needs no row of its own.
WITHOUT_KEY = {
    "f'{key}: {message}'": "config.require: documented as `section.key: must be ...`",
    "f'{where}.{key}: expected {_words(hints[key])}, got {_toml_value(value)}'": "documented as `expected a whole number, got ...`",
    "f'{where}: {exc}'": "puts the file and table in front of a ConfigError that has its own row",
    "str(exc)": "passes on a Rejected reason that has its own row",
    "facts.model_saw(run['model_saw'])": "documented as `N of the scored items are images that trained or ...`",
}


def collect_messages() -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(where, kind, stable leading text) of every message, and (where, kind, source) of those
    whose text cannot be read from the source."""
    found, unreadable = [], []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, kind, node, percent in _messages(tree):
            key = message_key(node, percent)
            where = f"{path.relative_to(ROOT)}:{line}"
            if key:
                found.append((where, kind, key))
            else:
                unreadable.append((where, kind, ast.unparse(node)))
    return found, unreadable


MESSAGES, UNREADABLE = collect_messages()


def test_messages_are_found():
    """The collection itself works: it sees the kinds of message this test is about."""
    kinds = {kind for _, kind, _ in MESSAGES}
    assert {"Rejected", "DataError", "ConfigError", "ModelError", "reject reason", "log.warning"} <= kinds
    keys = {key for _, _, key in MESSAGES}
    assert {"corrupt or truncated image", "broken symbolic link", "Say which classes are normal"} <= keys
    assert len(MESSAGES) > 50


def test_every_message_can_be_checked():
    """A message built only from placeholders cannot be matched against the docs: it must be
    one of the known few, so a new one is looked at rather than skipped."""
    unknown = [f"{where} {kind}: {source}" for where, kind, source in UNREADABLE if source not in WITHOUT_KEY]
    assert not unknown, ("messages without stable leading text (start them with words, or add them "
                         "to WITHOUT_KEY with the row that covers them): " + "; ".join(unknown))


@pytest.mark.parametrize("where,kind,key", MESSAGES, ids=[f"{w} {k}" for w, k, _ in MESSAGES])
def test_message_is_documented(where, kind, key):
    assert _normalise(key) in troubleshooting_section(), (
        f"{where}: the {kind} message starting {key!r} has no row in docs/troubleshooting.md; "
        "add one that quotes it and says what to do.")


def test_key_extraction():
    def key(source: str, percent: bool = False) -> str | None:
        return message_key(ast.parse(source, mode="eval").body, percent)

    assert key('f"{root} does not exist. Check the path."') == "does not exist"
    assert key('f"Only {n} normal images ({c}) in {d}; at least 4"') == "normal images"
    assert key('f"too large: {w}x{h} = {n:,} pixels"') == "too large"
    assert key('f"timezone: unknown time zone {name!r} (use an IANA name)"') == "timezone: unknown time zone"
    assert key('"only %d calibration images: the smallest"', percent=True) == "calibration images"
    assert key('f"{path}: {exc}"') is None
