"""One test set (issue 24, item 4): `evaluate --split test` scores the study's test subset,
the images the model card scored, and says so; `--all` scores the whole split and says so.
Real Optuna, real MLflow, a real tiny trial."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from celebhpo.cli import cli
from celebhpo.errors import DataError
from celebhpo.inference import evaluate
from tests.helpers import write_study


def _cli(*args: object) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def exported(tmp_path_factory, synth_root):
    """A one-trial study on 20 of the 30 test images (the first 20), exported: the folder."""
    tmp = tmp_path_factory.mktemp("subset")
    storage, uri = f"sqlite:///{tmp / 's.db'}", f"sqlite:///{tmp / 'm.db'}"
    path = write_study(tmp / "sub.toml", synth_root, name="sub", space="lr = [0.03]")
    path.write_text(path.read_text().replace("test_size = 30", "test_size = 20"))
    _cli("study", "create", path, "--grid", "--storage", storage, "--tracking-uri", uri)
    _cli("optimize", "--study", "sub", "--storage", storage, "--tracking-uri", uri)
    _cli("export-best", "--study", "sub", "--out", tmp / "best", "--storage", storage,
         "--tracking-uri", uri)
    return tmp / "best"


def test_evaluate_scores_what_the_card_scored_and_all_with_all(exported, synth_root):
    card = json.loads((exported / "model_card.json").read_text())
    assert card["metrics"]["test"]["n_images"] == 20
    out = _cli("evaluate", exported, synth_root, "--split", "test", "--out", exported / "eval")
    header = out.splitlines()[0]
    assert header == (f"test split of {synth_root}: 20 images, the study's test subset: the "
                      "first 20 of 30, as in the model card; --all scores all 30")
    written = json.loads((exported / "eval" / "metrics.json").read_text())
    for key in ("mean_acc", "map", "worst_group_acc"):
        assert written["tuned"][key] == pytest.approx(card["metrics"]["test"]["tuned"][key],
                                                      abs=1e-9), key
        assert written["0.5"][key] == pytest.approx(card["metrics"]["test"]["0.5"][key],
                                                    abs=1e-9), key
    assert written["slices"]["worst_group"] == card["slices"]["test"]["worst_group"]
    every = _cli("evaluate", exported, synth_root, "--split", "test", "--all")
    assert every.splitlines()[0] == f"test split of {synth_root}: 30 images, the whole split (--all)"
    # validation: the study took all 30, so the default is the whole split too
    val = _cli("evaluate", exported, synth_root, "--split", "val")
    assert val.splitlines()[0] == (f"val split of {synth_root}: 30 images, the whole split, "
                                   "as the model's study took it")


def test_a_folder_smaller_than_the_studys_subset_says_to_pass_all(exported, synth_root,
                                                                   tmp_path):
    from tests.helpers import kaggle_table

    ids, values, part = kaggle_table(synth_root)
    small = tmp_path / "small"
    small.mkdir()
    keep = [i for i in ids if part[i] != 2] + [i for i in ids if part[i] == 2][:10]
    rows = {i: v for i, v in zip(ids, values, strict=True)}
    head = (synth_root / "list_attr_celeba.csv").read_text().splitlines()[0]
    (small / "list_attr_celeba.csv").write_text(
        "\n".join([head, *(",".join([i, *map(str, rows[i])]) for i in keep)]) + "\n")
    (small / "list_eval_partition.csv").write_text(
        "\n".join(["image_id,partition", *(f"{i},{part[i]}" for i in keep)]) + "\n")
    (small / "img_align_celeba").symlink_to(synth_root / "img_align_celeba")
    with pytest.raises(DataError, match=r"the model's study scored 20 test images, but this "
                       r"folder's test split has 10; pass --all to score them all"):
        evaluate(exported, small, split="test", progress=False)
    assert evaluate(exported, small, split="test", whole_split=True,
                    progress=False).metrics["n_images"] == 10
