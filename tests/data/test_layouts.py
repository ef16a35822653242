"""Reading CelebA's three layouts, and every malformed-input error the reader promises."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from celebhpo.data.layouts import ATTRIBUTES, read_celeba, select_split
from celebhpo.errors import DataError
from tests.helpers import kaggle_table, write_official


@pytest.fixture
def tiny(tmp_path: Path):
    """A 10-image Kaggle-layout folder (labels only) whose files a test may edit: returns a
    writer `make(attr_lines=None, part_lines=None) -> root`."""
    root = tmp_path / "tiny"
    (root / "img_align_celeba" / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = [f"{i:06d}.jpg" for i in range(1, 11)]
    attr = ["image_id," + ",".join(ATTRIBUTES)]
    attr += [i + "," + ",".join(str(v) for v in rng.choice([-1, 1], 40)) for i in ids]
    part = ["image_id,partition"] + [f"{i},{0 if n < 6 else 1 if n < 8 else 2}"
                                     for n, i in enumerate(ids)]

    def make(attr_lines: list[str] | None = None, part_lines: list[str] | None = None) -> Path:
        (root / "list_attr_celeba.csv").write_text("\n".join(attr_lines or attr) + "\n")
        (root / "list_eval_partition.csv").write_text("\n".join(part_lines or part) + "\n")
        return root

    make.attr, make.part = attr, part  # type: ignore[attr-defined]
    return make


def test_kaggle_layout(synth_root):
    ds = read_celeba(synth_root)
    ids, values, part = kaggle_table(synth_root)
    assert ds.layout == "kaggle"
    assert ds.attributes == ATTRIBUTES and len(ATTRIBUTES) == 40
    assert ds.ids == ids
    assert ds.labels.dtype == np.uint8 and ds.labels.shape == (300, 40)
    np.testing.assert_array_equal(ds.labels, (values > 0).astype(np.uint8))
    assert [int(p) for p in ds.partition] == [part[i] for i in ids]
    assert ds.image_dir == synth_root / "img_align_celeba" / "img_align_celeba"
    assert all(p.is_file() for p in ds.paths([0, 299]))


@pytest.mark.parametrize("flat,zero_one,crlf", [(False, False, False), (False, True, True),
                                                (True, False, True), (True, True, False)])
def test_official_and_torchvision_layouts_match_kaggle(synth_root, tmp_path, flat, zero_one, crlf):
    ref = read_celeba(synth_root)
    root = write_official(synth_root, tmp_path / "celeba", flat=flat, zero_one=zero_one,
                          crlf=crlf, shuffle_partition=True)
    ds = read_celeba(root)
    assert ds.layout == ("torchvision" if flat else "official")
    assert ds.image_dir == root / "img_align_celeba"
    assert ds.ids == ref.ids
    np.testing.assert_array_equal(ds.labels, ref.labels)
    # the partition file was written in reverse order: the join is by id
    np.testing.assert_array_equal(ds.partition, ref.partition)
    assert read_celeba(root, layout=ds.layout).ids == ref.ids


def test_kaggle_crlf_and_bom(tiny):
    root = tiny()
    text = (root / "list_attr_celeba.csv").read_text()
    (root / "list_attr_celeba.csv").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    ds = read_celeba(root)
    assert len(ds.ids) == 10 and ds.ids[0] == "000001.jpg"


def test_neither_layout_names_the_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as e:
        read_celeba(tmp_path / "empty")
    msg = str(e.value)
    assert "list_attr_celeba.csv" in msg and "Anno/list_attr_celeba.txt" in msg
    assert "\n" not in msg


def _err(root: Path, **kw) -> str:
    with pytest.raises(DataError) as e:
        read_celeba(root, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_attribute_column(tiny):
    header, *rows = tiny.attr
    names = header.split(",")
    drop = names.index("Smiling")
    lines = [",".join(f for k, f in enumerate(line.split(",")) if k != drop)
             for line in [header, *rows]]
    msg = _err(tiny(attr_lines=lines))
    assert "list_attr_celeba.csv:1" in msg and "Smiling" in msg and "missing" in msg


def test_bad_value_names_file_line_and_column(tiny):
    lines = list(tiny.attr)
    fields = lines[3].split(",")
    fields[1 + ATTRIBUTES.index("Eyeglasses")] = "2"
    lines[3] = ",".join(fields)
    msg = _err(tiny(attr_lines=lines))
    assert "list_attr_celeba.csv:4" in msg and "Eyeglasses" in msg and "'2'" in msg


def test_bad_value_is_printed_as_written(tiny):
    """The value as it stands in the file, not numpy's repr of it (np.str_('yes'))."""
    lines = list(tiny.attr)
    fields = lines[5].split(",")
    fields[1 + ATTRIBUTES.index("Smiling")] = "yes"
    lines[5] = ",".join(fields)
    root = tiny(attr_lines=lines)
    msg = _err(root)
    assert msg == (f"{root / 'list_attr_celeba.csv'}:6: column Smiling (field "
                   f"{2 + ATTRIBUTES.index('Smiling')}) has 'yes'; values must be -1/1 or 0/1")


def test_extra_columns_are_read_around_with_a_warning(tiny):
    plain = read_celeba(tiny())
    header, *rows = tiny.attr
    lines = [header.replace(",Male,", ",Notes,Male,") + ",Source"]
    for row in rows:
        fields = row.split(",")
        at = 1 + ATTRIBUTES.index("Male")
        lines.append(",".join([*fields[:at], "free text", *fields[at:], "web"]))
    root = tiny(attr_lines=lines)
    with pytest.warns(UserWarning) as seen:
        ds = read_celeba(root)
    assert [str(w.message) for w in seen] == [
        f"{root / 'list_attr_celeba.csv'}:1: ignoring 2 column(s) that are not CelebA "
        "attributes: 'Notes', 'Source'"]
    assert ds.ids == plain.ids and np.array_equal(ds.labels, plain.labels)


def test_wrong_field_count(tiny):
    lines = list(tiny.attr)
    lines[5] += ",1"
    assert "list_attr_celeba.csv:6" in _err(tiny(attr_lines=lines))


def test_duplicate_ids(tiny):
    lines = list(tiny.attr)
    lines[2] = lines[1].split(",")[0] + "," + lines[2].split(",", 1)[1]
    msg = _err(tiny(attr_lines=lines))
    assert "duplicate" in msg and "000001.jpg" in msg
    parts = list(tiny.part)
    parts[3] = "000001.jpg,0"
    msg = _err(tiny(part_lines=parts))
    assert "list_eval_partition.csv:4" in msg and "duplicate" in msg


def test_partition_ids_without_labels(tiny):
    parts = tiny.part + [f"{i:06d}.jpg,0" for i in range(100, 107)]
    msg = _err(tiny(part_lines=parts))
    assert "7 image ids have no labels" in msg and "000100.jpg" in msg and "..." in msg


def test_label_ids_without_partition(tiny):
    msg = _err(tiny(part_lines=tiny.part[:-2]))
    assert "2 labelled image ids have no partition" in msg
    assert "000009.jpg" in msg and "000010.jpg" in msg


def test_partition_value_outside_012(tiny):
    parts = list(tiny.part)
    parts[2] = "000002.jpg,3"
    msg = _err(tiny(part_lines=parts))
    assert "list_eval_partition.csv:3" in msg and "'3'" in msg


@pytest.mark.parametrize("bad_id", ["../x.jpg", "/etc/passwd", "a/../../x.jpg", "..\\x.jpg"])
def test_image_id_escaping_the_folder(tiny, bad_id):
    lines, parts = list(tiny.attr), list(tiny.part)
    lines[1] = bad_id + "," + lines[1].split(",", 1)[1]
    parts[1] = f"{bad_id},0"
    msg = _err(tiny(attr_lines=lines, part_lines=parts))
    assert "outside the image folder" in msg and repr(bad_id) in msg


def test_official_count_line_mismatch(synth_root, tmp_path):
    root = write_official(synth_root, tmp_path / "celeba")
    attr = root / "Anno" / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    attr.write_text("\n".join(["299", *lines[1:]]) + "\n")
    assert "list_attr_celeba.txt:1" in _err(root)


def test_unreadable_label_file(tiny):
    root = tiny()
    (root / "list_attr_celeba.csv").write_bytes(b"\xff\xfe\x00garbage")
    assert "not UTF-8" in _err(root)


def test_select_split_first_and_random(synth_root):
    ds = read_celeba(synth_root)
    train = np.flatnonzero(ds.partition == 0)
    np.testing.assert_array_equal(select_split(ds, "train"), train)
    np.testing.assert_array_equal(select_split(ds, "train", 50), train[:50])
    a = select_split(ds, "train", 50, "random", seed=1)
    np.testing.assert_array_equal(a, select_split(ds, "train", 50, "random", seed=1))
    assert not np.array_equal(a, select_split(ds, "train", 50, "random", seed=2))
    assert not np.array_equal(a, train[:50])
    assert len(set(a)) == 50 and set(a) <= set(train) and list(a) == sorted(a)
    assert len(select_split(ds, "val")) == 30 and len(select_split(ds, "test")) == 30


def test_split_smaller_than_asked_or_empty(synth_root, tiny):
    ds = read_celeba(synth_root)
    with pytest.raises(DataError, match="asked for 31 val images but the split has 30"):
        select_split(ds, "val", 31)
    parts = [p if not p.endswith(",2") else p[:-1] + "1" for p in tiny.part]
    ds = read_celeba(tiny(part_lines=parts))
    with pytest.raises(DataError, match="test split is empty"):
        select_split(ds, "test")
    with pytest.raises(DataError, match="unknown split"):
        select_split(ds, "validation")
