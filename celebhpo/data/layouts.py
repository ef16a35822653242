"""CelebA label and partition files in the Kaggle, official and torchvision layouts."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from celebhpo.errors import DataError

ATTRIBUTES: list[str] = [
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes",
    "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
]


# layout -> (label file, partition file, image folder), relative to the root
LAYOUTS: dict[str, tuple[str, str, str]] = {
    "kaggle": ("list_attr_celeba.csv", "list_eval_partition.csv",
               "img_align_celeba/img_align_celeba"),
    "official": ("Anno/list_attr_celeba.txt", "Eval/list_eval_partition.txt", "img_align_celeba"),
    "torchvision": ("list_attr_celeba.txt", "list_eval_partition.txt", "img_align_celeba"),
}
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
_VALUE = {"1": 1, "-1": 0, "0": 0}  # CelebA's -1/1, or 0/1
_FEW = 5  # how many ids an error message lists


@dataclass
class CelebA:
    """Labels and partitions of one CelebA folder, joined by image id (label-file order)."""

    root: Path
    layout: str
    image_dir: Path
    attributes: list[str]
    ids: list[str]
    labels: np.ndarray  # (N, 40) uint8 in {0, 1}, columns in `attributes` order
    partition: np.ndarray  # (N,) int8: 0 = train, 1 = val, 2 = test
    attr_file: Path | None = None
    partition_file: Path | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def paths(self, rows: np.ndarray | list[int]) -> list[Path]:
        """Image paths of the given rows."""
        return [self.image_dir / self.ids[i] for i in rows]


def detect_layout(root: str | Path) -> str:
    """Which layout `root` holds: kaggle, official or torchvision (first one whose two label
    files both exist)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; point data.root at a CelebA folder "
                        "(or make one with `celebhpo data synth`)")
    for name, (attr, part, _) in LAYOUTS.items():
        if (root / attr).is_file() and (root / part).is_file():
            return name
    looked = "; ".join(f"{name}: {a} + {p}" for name, (a, p, _) in LAYOUTS.items())
    raise DataError(f"{root}: not a CelebA folder: looked for {looked}")


def read_celeba(root: str | Path, layout: str = "auto") -> CelebA:
    """Read the labels and partitions of a CelebA folder in any of the three layouts.

    Labels and partitions are joined by image id, never by row order. Raises DataError with one
    line naming the file and line (or ids) for anything malformed.
    """
    root = Path(root)
    if layout == "auto":
        layout = detect_layout(root)
    elif layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; use auto, {', '.join(LAYOUTS)}")
    attr_rel, part_rel, img_rel = LAYOUTS[layout]
    attr_file, part_file, image_dir = root / attr_rel, root / part_rel, root / img_rel
    for f in (attr_file, part_file):
        if not f.is_file():
            raise DataError(f"{f}: not found; a {layout}-layout CelebA folder needs "
                            f"{attr_rel} and {part_rel}")
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder not found ({layout} layout keeps the "
                        f"images in {img_rel}/)")

    ids, labels = _read_attributes(attr_file, csv=attr_file.suffix == ".csv")
    part_ids, parts = _read_partition(part_file, csv=part_file.suffix == ".csv")
    _check_ids(ids, attr_file)
    _check_case(image_dir, ids, attr_file)
    row_of = {i: n for n, i in enumerate(ids)}
    no_labels = [i for i in part_ids if i not in row_of]
    if no_labels:
        raise DataError(f"{part_file}: {len(no_labels)} image ids have no labels in "
                        f"{attr_file.name}: {_few(no_labels)}; use matching label and "
                        "partition files")
    partition = np.full(len(ids), -1, dtype=np.int8)
    partition[[row_of[i] for i in part_ids]] = parts
    if (partition < 0).any():
        missing = [ids[n] for n in np.flatnonzero(partition < 0)]
        raise DataError(f"{attr_file}: {len(missing)} labelled image ids have no partition in "
                        f"{part_file.name}: {_few(missing)}; use matching label and partition "
                        "files")
    return CelebA(root=root, layout=layout, image_dir=image_dir, attributes=list(ATTRIBUTES),
                  ids=ids, labels=labels, partition=partition, attr_file=attr_file,
                  partition_file=part_file)


def select_split(ds: CelebA, split: str, size: int = 0, subset: str = "first",
                 seed: int = 0) -> np.ndarray:
    """Row indices of `size` images of `split` (0 = all): the first ones in file order, or a
    seeded random choice (returned in file order). Same arguments, same rows."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use {', '.join(SPLITS)}")
    rows = np.flatnonzero(ds.partition == SPLITS[split])
    where = ds.partition_file or ds.root
    if len(rows) == 0:
        raise DataError(f"{where}: the {split} split is empty (no partition value "
                        f"{SPLITS[split]}); check the partition file")
    if size < 0:
        raise DataError(f"data.{split}_size must be 0 (all) or positive, got {size}")
    if size > len(rows):
        raise DataError(f"{where}: asked for {size} {split} images but the split has "
                        f"{len(rows)}; lower data.{split}_size (0 = all)")
    if size == 0 or size == len(rows):
        return rows
    if subset == "first":
        return rows[:size]
    if subset == "random":
        pick = np.random.default_rng(seed).choice(len(rows), size=size, replace=False)
        return rows[np.sort(pick)]
    raise DataError(f"unknown subset {subset!r}; use first or random")


# -- parsing -------------------------------------------------------------------------------
def _lines(path: Path) -> list[str]:
    """The file's lines without line ends (LF or CRLF), a UTF-8 BOM dropped."""
    try:
        return path.read_bytes().decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); is this a CelebA label "
                        "file?") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from e


def _split(line: str, csv: bool) -> list[str]:
    return [f.strip() for f in line.split(",")] if csv else line.split()


def _read_attributes(path: Path, csv: bool) -> tuple[list[str], np.ndarray]:
    """(ids, (N, 40) uint8 labels in ATTRIBUTES order) from a Kaggle CSV or an official .txt."""
    lines = _lines(path)
    first = 0  # index of the header line
    if not csv:
        # the official file: a count line, then the 40 names (no id column), then rows
        if not lines or not lines[0].strip().isdigit():
            raise DataError(f"{path}:1: expected the image count on the first line, got "
                            f"{(lines[0] if lines else '')[:40]!r}")
        first = 1
    if len(lines) <= first:
        raise DataError(f"{path}: no header line with the attribute names")
    names = _split(lines[first], csv)
    _no_index_column(path, names)
    if csv:
        names = names[1:]  # the image_id column
    elif names and names[0].lower() in ("image_id", "filename", "file"):
        names = names[1:]
    missing = [a for a in ATTRIBUTES if a not in names]
    if missing:
        raise DataError(f"{path}:{first + 1}: missing attribute columns: {', '.join(missing[:8])}"
                        f"{' ...' if len(missing) > 8 else ''} ({len(missing)} of 40); "
                        "the header must name all 40 CelebA attributes")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{path}:{first + 1}: attribute column {dup[0]!r} appears twice")
    extra = [n for n in names if n not in ATTRIBUTES]
    if extra:
        warnings.warn(f"{path}:{first + 1}: ignoring {len(extra)} column(s) that are not CelebA "
                      f"attributes: {', '.join(map(repr, extra[:8]))}"
                      f"{' ...' if len(extra) > 8 else ''}", stacklevel=1)
    cols = [names.index(a) for a in ATTRIBUTES]
    width = len(names) + 1

    ids: list[str] = []
    line_of: list[int] = []
    values: list[list[str]] = []
    for n, line in enumerate(lines[first + 1:], start=first + 2):
        if not line.strip():
            continue
        fields = _split(line, csv)
        if len(fields) != width:
            raise DataError(f"{path}:{n}: expected {width} fields (image id + {width - 1} "
                            f"values), found {len(fields)}")
        ids.append(fields[0])
        line_of.append(n)
        values.append(fields[1:])
    if not ids:
        raise DataError(f"{path}: no image rows after the header")
    if not csv and int(lines[0].strip()) != len(ids):
        raise DataError(f"{path}:1: says {int(lines[0].strip())} images but has {len(ids)} rows; "
                        "the file is truncated or edited")
    table = np.array(values, dtype=str)[:, cols]  # (N, 40) strings
    ok = np.isin(table, list(_VALUE))
    if not ok.all():
        r, c = map(int, np.argwhere(~ok)[0])
        raise DataError(f"{path}:{line_of[r]}: column {ATTRIBUTES[c]} (field {cols[c] + 2}) "
                        f"has {str(table[r, c])!r}; values must be -1/1 or 0/1")
    labels = (table == "1").astype(np.uint8)
    return ids, labels


def _read_partition(path: Path, csv: bool) -> tuple[list[str], np.ndarray]:
    """(ids, (N,) int8 partitions) from `image_id,partition` CSV or `id value` text."""
    lines = _lines(path)
    ids: list[str] = []
    parts: list[int] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = _split(line, csv)
        if n == 1:
            _no_index_column(path, fields)
        if n == 1 and len(fields) == 2 and fields[1] not in ("0", "1", "2") \
                and not fields[1].lstrip("-").isdigit():
            continue  # the header: image_id,partition
        if len(fields) != 2:
            raise DataError(f"{path}:{n}: expected 2 fields (image id, partition), found "
                            f"{len(fields)}")
        if fields[1] not in ("0", "1", "2"):
            raise DataError(f"{path}:{n}: partition {fields[1]!r} for {fields[0]}; must be 0 "
                            "(train), 1 (val) or 2 (test)")
        if fields[0] in seen:
            raise DataError(f"{path}:{n}: duplicate image id {fields[0]} (first on line "
                            f"{seen[fields[0]]})")
        seen[fields[0]] = n
        ids.append(fields[0])
        parts.append(int(fields[1]))
    if not ids:
        raise DataError(f"{path}: no partition rows")
    return ids, np.array(parts, dtype=np.int8)


def _no_index_column(path: Path, header: list[str]) -> None:
    """DataError when the header starts with a column before `image_id`: the row index that
    pandas' `to_csv` writes unless told `index=False` (its ids would be 0, 1, 2 ...)."""
    if len(header) > 2 and header[1].lower() in ("image_id", "filename", "file"):
        raise DataError(f"{path}:1: an extra first column ({header[0]!r}) before "
                        f"{header[1]!r}, as pandas' to_csv writes without index=False; remove "
                        "that column so image ids come first")


def _check_ids(ids: list[str], path: Path) -> None:
    """No duplicates, and every id names a file inside the image folder."""
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise DataError(f"{path}: duplicate image id {dup}; each image may have one row only")
    for i in ids:
        if not i or "/" in i or "\\" in i or i.startswith("."):
            _check_id_path(i, path)


def _check_case(image_dir: Path, ids: list[str], path: Path) -> None:
    """DataError when most ids name their files in another case (000001.jpg in the labels,
    000001.JPG on disk): every such image would be "file not found" on a case-sensitive disk.
    One stat when the first id is there."""
    if (image_dir / ids[0]).exists():
        return
    try:
        on_disk = {name.lower(): name for name in os.listdir(image_dir)}
    except OSError:
        return
    cased = [i for i in ids if on_disk.get(i.lower(), i) != i]
    if 2 * len(cased) > len(ids):
        raise DataError(f"{image_dir / cased[0]}: file not found, but "
                        f"{on_disk[cased[0].lower()]} is there: {len(cased)} of {len(ids)} ids "
                        f"in {path.name} differ from their files only in case (names are "
                        "case-sensitive); rename the files or fix the ids to match")


def _check_id_path(image_id: str, path: Path) -> None:
    pure = PurePosixPath(image_id.replace("\\", "/"))
    if (not image_id or pure.is_absolute() or PureWindowsPath(image_id).drive
            or ".." in pure.parts or os.path.isabs(image_id) or image_id in (".",)):
        raise DataError(f"{path}: image id {image_id!r} points outside the image folder; ids "
                        "must be file names like 000001.jpg")


def _few(items: list[str]) -> str:
    return ", ".join(items[:_FEW]) + (" ..." if len(items) > _FEW else "")
