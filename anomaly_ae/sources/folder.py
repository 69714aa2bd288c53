"""Image folders in the layouts people have.

- split layout: ``root/{train,test,val}/<class>/*`` with optional masks in
  ``root/ground_truth/<class>/<stem>_mask.png`` (the anomaly-benchmark layout);
- class layout: ``root/<class>/**/*``;
- flat layout: ``root/*`` (unlabelled);
- one image file (unlabelled), for scoring a single image.

Listing is deterministic (sorted names), never follows directory links (so link loops cannot
trap it) and rejects file links that lead outside the folder.
"""

from __future__ import annotations

import errno
import logging
import operator
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from anomaly_ae.errors import DataError
from anomaly_ae.imaging import IMAGE_EXTENSIONS
from anomaly_ae.sources.base import Item, Listing

log = logging.getLogger(__name__)

SPLIT_NAMES = {"train": "train", "test": "test", "val": "val", "valid": "val", "validation": "val"}
MASK_FOLDER = "ground_truth"
MASK_SUFFIXES = ("_mask", "")


def display_name(name: str) -> str:
    """A file name as valid UTF-8 text (undecodable bytes shown as \\xNN escapes)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_image_name(name: str) -> bool:
    """True for names with a known image extension (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


class FolderSource:
    """A folder of images in the split, class or flat layout."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def list(self) -> Listing:
        """List the folder's images with their classes, splits and masks."""
        root = self.root
        if not root.exists():
            raise DataError(f"{root} does not exist. Check the path.")
        if not root.is_dir():
            if is_image_name(root.name):
                return self._one_file()
            raise DataError(f"{root} is not a folder or an image file (named {', '.join(IMAGE_EXTENSIONS)}). Pass a "
                            "folder of images or one image; ingest also takes torchvision:<Name> and sample:<name>.")
        walker = _Walker(root)
        layout, items = self._layout_items(walker)
        classes = sorted({i.class_name for i in items if i.class_name is not None})
        index = {c: k for k, c in enumerate(classes)}
        for item in items:
            item.label = index.get(item.class_name) if item.class_name is not None else None
        description = {
            "kind": "folder", "spec": str(root), "root": os.fsdecode(root.resolve()),
            "layout": layout, "ignored_files": walker.ignored,
        }
        return Listing(items, classes, description, walker.file_stats)

    def _one_file(self) -> Listing:
        """The root is one image file: a flat listing of it alone (a link to it is followed: it was named)."""
        path = self.root
        item = Item(key=display_name(path.name), path=str(path))
        try:
            st = os.stat(path)
            parts = [(item.key, st.st_size, st.st_mtime_ns)]
            if not stat.S_ISREG(st.st_mode):
                item.reject_reason = "not a regular file"
        except OSError as exc:  # gone since the check above
            parts, item.reject_reason = [], f"cannot be read: {exc.strerror}"
        description = {"kind": "folder", "spec": str(path), "root": os.fsdecode(path.resolve()),
                       "layout": "file", "ignored_files": 0}
        return Listing([item], [], description, parts)

    def _layout_items(self, walker: _Walker) -> tuple[str, list[Item]]:
        children = walker.children(self.root)
        dirs = [e for e in children if e.is_dir(follow_symlinks=False)]
        split_dirs = [d for d in dirs if d.name.lower() in SPLIT_NAMES]
        if split_dirs:
            masks = walker.mask_index(self.root / MASK_FOLDER)
            items = []
            for split_dir in split_dirs:
                for item in self._class_items(walker, Path(split_dir.path)):
                    item.split = SPLIT_NAMES[split_dir.name.lower()]
                    item.mask_path = masks.get((item.class_name, _stem(item.path)))
                    items.append(item)
            return "split", items
        items = self._class_items(walker, self.root)
        return ("class" if any(i.class_name is not None for i in items) else "flat"), items

    def _class_items(self, walker: _Walker, top: Path) -> list[Item]:
        """Loose images under `top` (unlabelled) and images in its sub-folders (one class each)."""
        entries = walker.children(top)
        plain = walker.plain_items(entries, None)
        if plain is not None:  # loose images only (the flat layout)
            return plain
        items = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if entry.name == MASK_FOLDER and top == self.root:
                    continue
                found = walker.folder_items(entry, display_name(entry.name))
                if len(found) == 1 and found[0].reject_reason and str(found[0].path) == entry.path:
                    found[0].class_name = None  # an empty folder named like an image: a reject, not a class
                items += found
            else:
                item = walker.file_item(entry)
                if item is not None:
                    items.append(item)
        return items


_NAME = operator.attrgetter("name")


def _stem(path: Path | None) -> str:
    return os.path.splitext(os.path.basename(path))[0] if path else ""


class _Walker:
    """Sorted, link-safe directory walking that keeps the facts a fingerprint needs."""

    def __init__(self, root: Path):
        self.root = root
        self.prefix = os.path.join(str(root), "")
        self.real_root = os.path.realpath(root)
        self.ignored = 0
        self.files: list[tuple[str, str]] = []  # (key, path) of every image-named file, in order

    def children(self, top: Path) -> list[os.DirEntry]:
        try:
            with os.scandir(top) as it:
                entries = [e for e in it if not e.name.startswith(".")]
            entries.sort(key=_NAME)
            return entries
        except PermissionError:
            log.warning("skipping %s: permission denied", top)
            self.ignored += 1
            return []

    def files_under(self, top: Path, class_name: str | None = None) -> list[Item]:
        """Every image under `top` (of class `class_name`), depth first in name order.

        Walked with an explicit stack, not recursion, so folders of any depth can be listed.
        """
        out: list[Item] = []
        # One frame per open folder: its remaining entries, and (the folder's entry, how many
        # items had been found when it was entered) to tell an image-named folder holding none.
        first = self.children(top)
        plain = self.plain_items(first, class_name)
        if plain is not None:
            return plain
        stack: list[tuple[Iterator[os.DirEntry], tuple[os.DirEntry, int] | None]] = [(iter(first), None)]
        while stack:
            entries, opened = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                if opened is not None and len(out) == opened[1] and is_image_name(opened[0].name):
                    out.append(self._folder_reject(opened[0], class_name))
            elif entry.is_dir(follow_symlinks=False):
                inner = self.children(entry.path)
                plain = self.plain_items(inner, class_name)
                if plain is not None:
                    out += plain
                else:
                    stack.append((iter(inner), (entry, len(out))))
            else:
                item = self.file_item(entry, class_name)
                if item is not None:
                    out.append(item)
        return out

    def plain_items(self, entries: list[os.DirEntry], class_name: str | None) -> list[Item] | None:
        """The items of a folder's entries when every one is a regular file with an image name and
        a plain-text path (most folders), made in bulk as `file_item` makes them one by one (100,000
        images in ten folders listed in about a seventh less time); None otherwise."""
        if not entries or not all([e.is_file(follow_symlinks=False) for e in entries]):
            return None
        paths, prefix = [e.path for e in entries], self.prefix
        if not all([p.startswith(prefix) and p.lower().endswith(IMAGE_EXTENSIONS) for p in paths]):
            return None
        rels = [p[len(prefix):] for p in paths]
        if not all([rel.isascii() for rel in rels]):
            return None
        self.files += zip(rels, paths)
        return [Item(rel, path, class_name=class_name) for rel, path in zip(rels, paths)]

    def folder_items(self, entry: os.DirEntry, class_name: str | None = None) -> list[Item]:
        """Images under a sub-folder; a folder named like an image but holding none is a reject."""
        items = self.files_under(entry.path, class_name)
        if not items and is_image_name(entry.name):
            return [self._folder_reject(entry, class_name)]
        return items

    def _folder_reject(self, entry: os.DirEntry, class_name: str | None = None) -> Item:
        return Item(key=self.relative(entry.path), path=entry.path, class_name=class_name,
                    reject_reason="is a directory, not an image file")

    def file_item(self, entry: os.DirEntry, class_name: str | None = None) -> Item | None:
        """None for a non-image name, else its Item (with a reject reason when unusable)."""
        if not entry.name.lower().endswith(IMAGE_EXTENSIONS):
            self.ignored += 1
            return None
        path = entry.path  # a plain string: listing 100k files stays quick
        rel = self.relative(path)
        self.files.append((rel, path))
        item = Item(rel, path, class_name=class_name)
        if entry.is_file(follow_symlinks=False):  # a regular file (the directory entry's type: no system call)
            return item
        reason = "not a regular file"
        if entry.is_symlink():
            reason = self._link_problem(entry)
            try:
                if reason is None and not stat.S_ISREG(entry.stat().st_mode):
                    reason = "not a regular file"
            except OSError:
                reason = reason or "broken symbolic link (its target does not exist)"
        item.reject_reason = reason
        return item

    def file_stats(self, known: dict) -> list[tuple[str, int, int]]:
        """(key, size, modification time) of every listed file that can be looked up, in order;
        those in `known` ({path: (size, time)}, from reading the file) are not looked up again."""
        out = []
        for rel, path in self.files:
            facts = known.get(path)
            if facts is None:
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                facts = st.st_size, st.st_mtime_ns
            out.append((rel, *facts))
        return out

    def relative(self, path: str) -> str:
        """`path` relative to the root, as display text."""
        rel = path[len(self.prefix):] if path.startswith(self.prefix) else os.path.relpath(path, self.root)
        return rel if rel.isascii() else display_name(rel)

    def _link_problem(self, entry: os.DirEntry) -> str | None:
        try:
            os.stat(entry.path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "symbolic link loop (the link leads back to itself, directly or through other links)"
        target = os.path.realpath(entry.path)
        if not os.path.exists(target):
            return "broken symbolic link (its target does not exist)"
        if os.path.commonpath([target, self.real_root]) != self.real_root:
            return f"symbolic link points outside the folder (to {display_name(target)}); not followed"
        return None

    def mask_index(self, mask_root: Path) -> dict:
        """{(class, image stem): mask path} for ``ground_truth/<class>/<stem>[_mask].<ext>``."""
        index: dict = {}
        if not mask_root.is_dir():
            return index
        for cls_entry in self.children(mask_root):
            if not cls_entry.is_dir(follow_symlinks=False):
                continue
            for entry in self.children(Path(cls_entry.path)):
                found = self.file_item(entry)  # the same checks as images: links, special files
                if found is None:
                    continue
                if found.reject_reason:
                    log.warning("mask %s not used: %s", found.key, found.reject_reason)
                    continue
                stem = _stem(Path(entry.name))
                for suffix in MASK_SUFFIXES:
                    if suffix and stem.endswith(suffix):
                        stem = stem[: -len(suffix)]
                        break
                index.setdefault((display_name(cls_entry.name), stem), Path(entry.path))
        return index
