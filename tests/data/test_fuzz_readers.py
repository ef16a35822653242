"""Fuzzed CelebA label files: every input loads, or raises DataError — never a deep traceback."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celebhpo.data import ATTRIBUTES, read_celeba
from celebhpo.errors import DataError

cell = st.sampled_from(["1", "-1", "0", "2", "", "x", "1.0", " 1", "nan"])
ids = st.sampled_from(["000001.jpg", "000002.jpg", "000003.jpg", "../x.jpg", "/etc/passwd", "",
                       "a b.jpg", "000001.jpg,1"])
rows = st.lists(st.tuples(ids, st.lists(cell, min_size=0, max_size=42)), max_size=5)
parts = st.lists(st.tuples(ids, st.sampled_from(["0", "1", "2", "3", "-1", "", "a"])), max_size=5)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(rows=rows, parts=parts, header_cut=st.integers(0, 3), crlf=st.booleans())
def test_kaggle_reader_loads_or_raises_data_error(tmp_path_factory, rows, parts, header_cut,
                                                   crlf):
    root = tmp_path_factory.mktemp("celeba")
    (root / "img_align_celeba" / "img_align_celeba").mkdir(parents=True)
    end = "\r\n" if crlf else "\n"
    header = ["image_id", *ATTRIBUTES[: len(ATTRIBUTES) - header_cut]]
    attr = [",".join(header)] + [",".join([i, *cells]) for i, cells in rows]
    (root / "list_attr_celeba.csv").write_text(end.join(attr) + end)
    part = ["image_id,partition"] + [f"{i},{p}" for i, p in parts]
    (root / "list_eval_partition.csv").write_text(end.join(part) + end)
    try:
        ds = read_celeba(root)
    except DataError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert ds.labels.shape == (len(ds.ids), 40)
        assert set(ds.labels.ravel().tolist()) <= {0, 1}
