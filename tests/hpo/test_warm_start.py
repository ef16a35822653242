"""Warm start (`study create --warm-start-from OLD`, hpo/warm.py): copies of OLD's finished
trials that fit, the reasons the others were left out, a grid that runs only the points left,
TPE that learns from the copies, the data fingerprint, the parent-run link, export-best on a
copy, and each bad input.

Real Optuna studies on temporary SQLite storages and real MLflow on a temporary SQLite store.
OLD's trials are told to Optuna directly (no training) except where a test says it trains:
the grid test runs `optimize` on tiny synthetic faces.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution

from celebhpo.cli import cli
from celebhpo.config import load_study_file
from celebhpo.errors import StudyError
from celebhpo.export import export_best
from celebhpo.hpo import StudyRecord, create_study, load_study, open_study, optimize
from celebhpo.hpo.record import data_fingerprint
from celebhpo.hpo.space import suggest_params
from celebhpo.hpo.warm import WARM_ATTR, WARM_RUN_ATTR, WarmStart
from tests.helpers import mlflow_runs, write_study

TS = optuna.trial.TrialState
LR = FloatDistribution(1e-4, 1e-1, log=True)
DROPOUT = CategoricalDistribution([0.1, 0.3])
RANGE_SPACE = "lr = { low = 0.0001, high = 0.1, log = true }\ndropout = [0.1, 0.3]"


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"


@pytest.fixture
def storage(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def _create(tmp_path: Path, root: Path, storage: str, tracking_uri: str, name: str, *,
            overrides: tuple[str, ...] = (), warm: WarmStart | None = None, **study: object):
    """create_study from a tiny study file (tests.helpers.write_study)."""
    path = write_study(tmp_path / f"{name}.toml", root, name=name, **study)
    cfg = load_study_file(path, overrides=list(overrides))
    return create_study(cfg, storage=storage, tracking_uri=tracking_uri, warm_start=warm)


def _new(tmp_path, root, storage, tracking_uri, name, warm: WarmStart, **study):
    return _create(tmp_path, root, storage, tracking_uri, name, warm=warm, **study)


def _tell_queued(storage: str, name: str, values: list[float]) -> None:
    """Finish the queued grid points of study `name` in order, as if trained (no training)."""
    study = optuna.load_study(study_name=name, storage=storage)
    for value in values:
        trial = study.ask()
        trial.set_user_attr("epochs_run", 1)
        trial.set_user_attr("mlflow_run_id", f"run-{trial.number}")
        trial.report(value + 0.1, 1)
        study.tell(trial, value)


def _add(study: optuna.Study, state: TS, params: dict, value: float | None = None,
         **attrs: object) -> None:
    dists = {"lr": LR, "dropout": DROPOUT, "num_features": CategoricalDistribution([16, 32])}
    study.add_trial(optuna.trial.create_trial(
        state=state, value=value, params=params, distributions={k: dists[k] for k in params},
        user_attrs={"epochs_run": 1, **attrs}, intermediate_values={1: 0.7, 2: 0.6}))


# -- grid: only the new points run ------------------------------------------------------------
def test_grid_warm_start_runs_only_the_new_points(tmp_path, synth_root, storage, tracking_uri):
    """A 4-trial grid into a 6-point grid: optimize trains exactly the 2 new points; the new
    parent run links to the old one, also after optimize has marked its best."""
    old_space = "lr = [0.003, 0.03]\ndropout = [0.1, 0.2]"
    _create(tmp_path, synth_root, storage, tracking_uri, "grid-old", space=old_space)
    _tell_queued(storage, "grid-old", [0.9, 0.95, 1.0, 1.05])  # worse than any trained trial
    new_space = "lr = [0.003, 0.03]\ndropout = [0.1, 0.2, 0.3]"
    created = _new(tmp_path, synth_root, storage, tracking_uri, "grid-new", WarmStart("grid-old"),
                   space=new_space)
    warm = created.warm
    assert "a grid of 6 points" in created.message
    assert (len(warm.trials), warm.grid_done, warm.grid_queued, warm.left_out) == (4, 4, 2, {})

    summary = optimize(study_name="grid-new", storage=storage, progress=False, echo=lambda _: None)
    assert len(summary.ran) == 2
    study, _ = load_study("grid-new", storage)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TS.COMPLETE] * 6
    trained = [t for t in trials if "mlflow_run_id" in t.user_attrs]
    assert sorted(t.number for t in trained) == sorted(summary.ran)
    assert {t.params["dropout"] for t in trained} == {0.3}
    assert sorted(mlflow_runs(tracking_uri, "grid-new")) == sorted(summary.ran)  # 2 runs, no more
    copies = [t for t in trials if WARM_ATTR in t.user_attrs]
    assert sorted(t.user_attrs[WARM_ATTR] for t in copies) == [f"grid-old#{n}" for n in range(4)]
    assert all(t.user_attrs[WARM_RUN_ATTR] == f"run-{t.user_attrs[WARM_ATTR][9:]}"
               for t in copies)

    old_parent = StudyRecord.of(load_study("grid-old", storage)[0]).parent_run_id
    record = StudyRecord.of(study)
    assert record.warm_start["study"] == "grid-old" and record.data_fingerprint["labels"]
    tags = MlflowClient(tracking_uri).get_run(record.parent_run_id).data.tags
    assert tags["celebhpo.warm_start_from"] == "grid-old"
    assert tags["celebhpo.warm_start_parent_run_id"] == old_parent
    assert tags["celebhpo.warm_start_link"].endswith(f"/runs/{old_parent}")
    note = tags["mlflow.note.content"]
    assert "Best so far" in note and "Warm-started from study **grid-old**: 4 of its trials" in note


def test_export_best_of_a_copy_says_where_it_was_trained(tmp_path, synth_root, storage,
                                                         tracking_uri):
    _create(tmp_path, synth_root, storage, tracking_uri, "src", space="lr = [0.003, 0.03]")
    _tell_queued(storage, "src", [0.2, 0.5])
    _new(tmp_path, synth_root, storage, tracking_uri, "dst", WarmStart("src"),
         space="lr = [0.003, 0.03, 0.3]")
    with pytest.raises(StudyError, match=(
            r"trial 0 of study 'dst' is a copy of trial 0 of study 'src' .* trained there.*"
            rf"celebhpo export-best --study src --trial 0 --storage {re.escape(storage)} "
            "--out DIR")):
        export_best(study_name="dst", storage=storage, out=tmp_path / "best", progress=False)
    assert not (tmp_path / "best").exists()


# -- TPE ---------------------------------------------------------------------------------------
def _tpe_pair(tmp_path, root, storage, tracking_uri):
    """Study `old` with 6 COMPLETE trials (best at lr=1e-2), `new` warm-started from it and
    `fresh`, the same config without history."""
    _create(tmp_path, root, storage, tracking_uri, "old", sampler="tpe", space=RANGE_SPACE,
            overrides=("study.tracking=off",))
    old = optuna.load_study(study_name="old", storage=storage)
    for lr in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2):
        _add(old, TS.COMPLETE, {"lr": lr, "dropout": 0.1}, value=abs(lr - 1e-2) * 100 + 0.1)
    off = ("study.tracking=off",)  # MLflow plays no part here
    _new(tmp_path, root, storage, tracking_uri, "new", WarmStart("old"), sampler="tpe",
         space=RANGE_SPACE, overrides=off)
    _create(tmp_path, root, storage, tracking_uri, "fresh", sampler="tpe", space=RANGE_SPACE,
            overrides=off)
    return old


def test_tpe_learns_from_the_copies(tmp_path, synth_root, storage, tracking_uri):
    old = _tpe_pair(tmp_path, synth_root, storage, tracking_uri)

    # the copies count toward TPE's startup trials: with n_startup_trials=6 the first
    # suggestion comes from the model (near the best copy, lr=1e-2), not from the random
    # sampler that a study without history uses (same seed)
    def first_lr(name: str) -> float:
        s = optuna.load_study(study_name=name, storage=storage,
                              sampler=optuna.samplers.TPESampler(n_startup_trials=6, seed=1))
        trial = s.ask()
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        s.tell(trial, state=TS.FAIL)  # out of the way of what follows
        return lr

    warm_lr, fresh_lr = first_lr("new"), first_lr("fresh")
    assert warm_lr != fresh_lr
    assert 1e-3 < warm_lr < 1e-1, warm_lr

    study, cfg, _ = open_study("new", storage, worker=True)  # the sampler a worker uses
    assert len(study.get_trials(states=(TS.COMPLETE, TS.PRUNED))) == 6  # what TPE counts
    seen = [t.params for t in old.get_trials()]
    asked = [suggest_params(study.ask(), cfg.space) for _ in range(3)]
    assert not [p for p in asked if p in seen], asked


# -- what is copied, what is left out and why ---------------------------------------------------
def test_left_out_by_reason(tmp_path, synth_root, storage, tracking_uri):
    _create(tmp_path, synth_root, storage, tracking_uri, "old", sampler="tpe",
            space=RANGE_SPACE, overrides=("study.tracking=off",))
    old = optuna.load_study(study_name="old", storage=storage)
    _add(old, TS.COMPLETE, {"lr": 1e-3, "dropout": 0.1}, 0.5, mlflow_run_id="r0", pid=1)
    _add(old, TS.COMPLETE, {"lr": 5e-2, "dropout": 0.1}, 0.4)  # lr out of the new range
    _add(old, TS.PRUNED, {"lr": 1e-3, "dropout": 0.3})  # dropout not in the new list
    _add(old, TS.COMPLETE, {"lr": 2e-3}, 0.6)  # no dropout
    _add(old, TS.COMPLETE, {"lr": 2e-3, "dropout": 0.1, "num_features": 16}, 0.6)  # extra
    _add(old, TS.FAIL, {"lr": 2e-3, "dropout": 0.1})
    _add(old, TS.PRUNED, {"lr": 2e-3, "dropout": 0.1}, pruned_at=2)

    path = write_study(tmp_path / "new.toml", synth_root, name="new", sampler="tpe",
                       space="lr = { low = 0.0001, high = 0.01, log = true }\ndropout = [0.1]")
    run = CliRunner().invoke(cli, ["study", "create", str(path), "--storage", storage,
                                   "--tracking-uri", tracking_uri, "--warm-start-from", "old"])
    assert run.exit_code == 0, run.output
    assert run.output.splitlines()[1:] == [
        f"warm start from study 'old' in {storage}: copied 2 trials (1 COMPLETE, 1 PRUNED)",
        "  left out 2: out of range (trial 1: lr=0.05; trial 2: dropout=0.3)",
        "  left out 2: key missing (trial 3: dropout; trial 4: num_features)",
        "  left out 1: not finished (trial 5 (FAIL))",
    ]
    new, _ = load_study("new", storage)
    first, pruned = new.get_trials()
    assert first.params == {"lr": 1e-3, "dropout": 0.1} and first.value == 0.5
    assert first.distributions == {"lr": FloatDistribution(1e-4, 1e-2, log=True),
                                   "dropout": CategoricalDistribution([0.1])}
    assert first.user_attrs == {"epochs_run": 1, WARM_ATTR: "old#0", WARM_RUN_ATTR: "r0"}
    assert first.datetime_start == old.trials[0].datetime_start
    assert pruned.state == TS.PRUNED and pruned.intermediate_values == {1: 0.7, 2: 0.6}
    assert pruned.user_attrs["pruned_at"] == 2

    other = _new(tmp_path, synth_root, storage, tracking_uri, "other-metric", WarmStart("old"),
                 sampler="tpe", space=RANGE_SPACE, study_extra='metric = "val_mean_acc"')
    assert other.warm.trials == [] and {k: len(v) for k, v in other.warm.left_out.items()} == {
        "different metric": 6, "not finished": 1}

    with pytest.raises(StudyError, match=r"--warm-start-from old: that study ranks trials by 1 "
                       r"metric\(s\) \(val_loss\), this one by 2 \(val_mean_acc, gflops\)"):
        _new(tmp_path, synth_root, storage, tracking_uri, "two", WarmStart("old"),
             sampler="tpe", space=RANGE_SPACE, study_extra='metric = ["val_mean_acc", "gflops"]')
    assert "two" not in optuna.get_all_study_names(storage)


# -- data fingerprint ---------------------------------------------------------------------------
def test_other_data_is_refused_unless_allowed(tmp_path, synth_root, storage, tracking_uri):
    _create(tmp_path, synth_root, storage, tracking_uri, "old", overrides=(
        "study.tracking=off",))
    _tell_queued(storage, "old", [0.5, 0.6])
    path = write_study(tmp_path / "bigger.toml", synth_root, name="bigger")
    bigger = load_study_file(path, overrides=["data.image_size=24"])
    with pytest.raises(StudyError, match=r"--warm-start-from old: that study was trained on "
                       r"other data \(image_size 16 -> 24\).*--allow-other-data"):
        create_study(bigger, storage=storage, tracking_uri=tracking_uri,
                     warm_start=WarmStart("old"))
    assert "bigger" not in optuna.get_all_study_names(storage)  # nothing half-created
    assert not MlflowClient(tracking_uri).get_experiment_by_name("bigger")

    allowed = create_study(bigger, storage=storage, tracking_uri=tracking_uri,
                           warm_start=WarmStart("old", allow_other_data=True))
    assert len(allowed.warm.trials) == 2 and allowed.warm.other_data == "image_size 16 -> 24"

    # the same faces with one label changed: another labels file
    root = tmp_path / "relabelled"
    shutil.copytree(synth_root, root, symlinks=True,
                    ignore=shutil.ignore_patterns("img_align_celeba", ".celebhpo-cache"))
    (root / "img_align_celeba").symlink_to(synth_root / "img_align_celeba")
    labels = root / "list_attr_celeba.csv"
    lines = labels.read_text().splitlines()
    cells = lines[1].split(",")
    cells[1] = "1" if cells[1] == "-1" else "-1"
    labels.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    assert data_fingerprint(load_study_file(path).data)["partition"] == data_fingerprint(
        load_study_file(write_study(tmp_path / "r.toml", root)).data)["partition"]
    with pytest.raises(StudyError, match=r"other data \(labels file differs\)"):
        _new(tmp_path, root, storage, tracking_uri, "relabelled", WarmStart("old"))


def test_fingerprint_of_an_unreadable_root_names_the_root(tmp_path):
    path = write_study(tmp_path / "s.toml", tmp_path / "elsewhere")
    fp = data_fingerprint(load_study_file(path).data)
    assert fp["labels"] is None and fp["root"] == str(tmp_path / "elsewhere")


# -- bad input, on the command line -------------------------------------------------------------
@pytest.mark.parametrize("case", ["missing", "not-a-url", "no-file", "unreachable", "alone",
                                  "storage-alone"])
def test_bad_warm_start_input_is_one_line(case, tmp_path, synth_root, storage, tracking_uri):
    _create(tmp_path, synth_root, storage, tracking_uri, "old", overrides=(
        "study.tracking=off",))
    path = write_study(tmp_path / "new.toml", synth_root, name="new")
    extra, expected = {
        "missing": (["--warm-start-from", "nope"], f"Error: --warm-start-from nope: no study "
                    f"'nope' in {storage} (studies there: old); pass --storage-of-old URL for "
                    "a study in another storage"),
        "not-a-url": (["--warm-start-from", "old", "--storage-of-old", "old.db"],
                      "Error: storage 'old.db': not a URL; use sqlite:///old.db"),
        "no-file": (["--warm-start-from", "old", "--storage-of-old",
                     f"sqlite:///{tmp_path / 'none.db'}"],
                    f"Error: --warm-start-from old: no study storage at {tmp_path / 'none.db'}"),
        "unreachable": (["--warm-start-from", "old", "--storage-of-old",
                         "postgresql+psycopg2://postgres@127.0.0.1:1/x"],
                        "Error: --warm-start-from old: cannot open storage postgresql"),
        "alone": (["--allow-other-data"], "Error: --allow-other-data needs --warm-start-from "
                  "OLD; see `celebhpo study create -h`"),
        "storage-alone": (["--storage-of-old", storage], "Error: --storage-of-old needs "
                          "--warm-start-from OLD; see `celebhpo study create -h`"),
    }[case]
    run = CliRunner().invoke(cli, ["study", "create", str(path), "--storage", storage,
                                   "--tracking-uri", tracking_uri, *extra])
    assert run.exit_code == 1, run.output
    assert len(run.output.strip().splitlines()) == 1 and run.output.startswith(expected), (
        run.output)
    assert optuna.get_all_study_names(storage) == ["old"]


def test_a_warm_start_into_a_study_that_exists_is_refused_not_ignored(tmp_path, synth_root,
                                                                      storage, tracking_uri):
    _create(tmp_path, synth_root, storage, tracking_uri, "old", overrides=(
        "study.tracking=off",))
    _tell_queued(storage, "old", [0.5, 0.6])
    _create(tmp_path, synth_root, storage, tracking_uri, "new", overrides=(
        "study.tracking=off",))
    with pytest.raises(StudyError, match=r"^study 'new' already exists, and --warm-start-from "
                       r"old copies trials only into a study it creates: pass --replace"):
        _new(tmp_path, synth_root, storage, tracking_uri, "new", WarmStart("old"),
             overrides=("study.tracking=off",))
    assert not any(WARM_ATTR in t.user_attrs for t in load_study("new", storage)[0].trials)
    # created from old, the same again is nothing to do; with --replace the copies come again
    _new(tmp_path, synth_root, storage, tracking_uri, "again", WarmStart("old"),
         overrides=("study.tracking=off",))
    same = _new(tmp_path, synth_root, storage, tracking_uri, "again", WarmStart("old"),
                overrides=("study.tracking=off",))
    assert not same.created
