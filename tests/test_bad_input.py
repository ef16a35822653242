"""Bad input that used to escape as a traceback, a raw warning or a silent exit 0 (issue 14):
outputs that cannot be written, predict with nothing readable, --top below 1, an extra label
column, PIL's decompression-bomb limits. Each must be one line, with nothing written.

Tests run as root here, where a 0o555 folder does not stop a write: the in-process tests put
the output under a regular file (which stops root too), and the permission tests run the
command in a child process without CAP_DAC_OVERRIDE (`setpriv`), where 0o555 holds.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from celebhpo._io import atomic_write, output_errors
from celebhpo.cli import cli
from celebhpo.data import ATTRIBUTES, IMAGENET_MEAN, IMAGENET_STD, load_image
from celebhpo.errors import CelebhpoError, DataError
from celebhpo.training.checkpoint import Checkpoint
from celebhpo.training.models import create_model
from tests.helpers import write_study

SIZE = 16
NO_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
          "--bounding-set=-dac_override,-dac_read_search"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """An export folder holding a seeded, untrained tiny model.pt (16 px, squash)."""
    work = tmp_path_factory.mktemp("bad-input-model")
    torch.manual_seed(0)
    model = create_model("tiny", num_labels=40, num_features=16, dropout=0.0).eval()
    Checkpoint(
        arch="tiny", state_dict=model.state_dict(), attributes=list(ATTRIBUTES),
        config={"data": {"image_size": SIZE, "crop": "squash"},
                "train": {"arch": "tiny", "num_features": 16, "dropout": 0.0}},
        mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), thresholds=[0.5] * 40, metrics={},
        epoch=1,
    ).save(work / "model" / "model.pt")
    return work / "model"


@pytest.fixture
def cache_env(tmp_path, monkeypatch) -> Path:
    """retrieve's prediction cache in this test's folder (never ~/.cache)."""
    monkeypatch.setenv("CELEBHPO_CACHE_DIR", str(tmp_path / "predcache"))
    return tmp_path / "predcache"


def faces(synth_root: Path, dst: Path, n: int = 4) -> Path:
    dst.mkdir()
    for src in sorted((synth_root / "img_align_celeba" / "img_align_celeba").iterdir())[:n]:
        shutil.copy(src, dst / src.name)
    return dst


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def command(name: str, out: Path, tmp: Path, synth_root: Path, model: Path) -> list[str]:
    """The command line whose output goes to `out`."""
    if name == "train":
        study = write_study(tmp / "study.toml", synth_root)
        return ["train", str(study), "--set", f"data.cache_dir={tmp / 'cache'}",
                "--out", str(out / "model.pt")]
    if name == "evaluate":
        return ["evaluate", str(model), str(synth_root), "--out", str(out)]
    if name == "retrieve":
        return ["retrieve", str(model), str(faces(synth_root, tmp / "photos")), "--where",
                "Male", "--sheet", str(out / "sheet.png")]
    return ["export-best", "--study", "s", "--storage", f"sqlite:///{tmp / 's.db'}",
            "--out", str(out)]


OPTION = {"train": "--out", "evaluate": "--out", "retrieve": "--sheet", "export-best": "--out"}
WHERE = {"train": "a file path in a writable folder", "evaluate": "a writable folder",
         "retrieve": "a file path in a writable folder", "export-best": "a writable folder"}
TARGET = {"train": "model.pt", "evaluate": "", "retrieve": "sheet.png", "export-best": ""}


# -- 1. outputs that cannot be written -------------------------------------------------------
@pytest.mark.parametrize("name", list(OPTION))
def test_output_under_a_file_is_one_line_before_any_work(name, tmp_path, synth_root, model_dir,
                                                         cache_env):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder\n")
    out = blocker / "sub"
    result = CliRunner().invoke(cli, command(name, out, tmp_path, synth_root, model_dir))
    target = out / TARGET[name] if TARGET[name] else out
    assert result.exit_code == 1, result.output
    assert lines(result.output) == [
        f"Error: cannot write to {target}: {blocker} is a file, not a folder; pass "
        f"{OPTION[name]} {WHERE[name]}"]
    assert blocker.read_text() == "a file, not a folder\n"
    # refused before the work: no images decoded for training, none predicted, no study made
    assert not (tmp_path / "cache").exists() and not cache_env.exists()
    assert not (tmp_path / "s.db").exists()


def test_train_out_that_is_a_folder_is_refused_first(tmp_path, synth_root):
    study = write_study(tmp_path / "study.toml", synth_root)
    (tmp_path / "runs").mkdir()
    result = CliRunner().invoke(cli, ["train", str(study), "--set",
                                      f"data.cache_dir={tmp_path / 'cache'}",
                                      "--out", str(tmp_path / "runs")])
    assert result.exit_code == 1
    assert lines(result.output) == [f"Error: cannot write to {tmp_path / 'runs'}: it is a "
                                    "folder; pass --out a file path in a writable folder"]
    assert not (tmp_path / "cache").exists()


def _cli_process(args: list[str], cwd: Path, *, prefix: tuple[str, ...] = (),
                 preexec=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "CELEBHPO_CACHE_DIR": str(cwd / "predcache")}
    return subprocess.run([*prefix, sys.executable, "-m", "celebhpo", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, preexec_fn=preexec)


@pytest.mark.parametrize("name", ["train", "evaluate"])  # a file and a folder; same probe
def test_read_only_folder_is_one_line_naming_it(name, tmp_path, synth_root, model_dir):
    """A 0o555 folder, met by a process that permissions bind (root without DAC override)."""
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root ignores 0o555 and setpriv is not installed to drop that power")
        prefix = tuple(NO_DAC)
    ro = tmp_path / "ro"
    ro.mkdir()
    args = command(name, ro / "out", tmp_path, synth_root, model_dir)
    ro.chmod(0o555)
    try:
        done = _cli_process(args, tmp_path, prefix=prefix)
    finally:
        ro.chmod(0o755)
    target = ro / "out" / TARGET[name] if TARGET[name] else ro / "out"
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert lines(done.stderr) == [f"Error: cannot write to {target}: Permission denied; pass "
                                  f"{OPTION[name]} {WHERE[name]}"]
    assert list(ro.iterdir()) == []


def _file_size_limit(limit: int):
    """For preexec_fn: in the child, writes past `limit` bytes fail with EFBIG (no signal)."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_sheet_that_cannot_be_written_after_predicting_names_it(tmp_path, synth_root, model_dir):
    """The probe passes, the faces are predicted, the ~100 kB PNG outgrows RLIMIT_FSIZE."""
    photos = faces(synth_root, tmp_path / "photos", n=12)
    sheet = tmp_path / "out" / "sheet.png"
    done = _cli_process(["retrieve", str(model_dir), str(photos), "--where", "not Bald or Bald",
                         "--sheet", str(sheet)], tmp_path, preexec=_file_size_limit(32 << 10))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert lines(done.stderr) == [f"Error: cannot write to {sheet}: File too large; pass "
                                  "--sheet a file path in a writable folder"]
    assert not sheet.parent.exists() or list(sheet.parent.iterdir()) == []


def test_train_checkpoint_that_cannot_be_saved_says_where_it_should_have_gone(tmp_path,
                                                                              synth_root):
    """The probe passes, training runs, the ~8.5 MB checkpoint outgrows RLIMIT_FSIZE."""
    study = write_study(tmp_path / "study.toml", synth_root)
    out = tmp_path / "out" / "model.pt"
    done = _cli_process(["train", str(study), "--set", "num_features=4096", "--set",
                         f"data.cache_dir={tmp_path / 'cache'}", "--out", str(out)],
                        tmp_path, preexec=_file_size_limit(4 << 20))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert lines(done.stderr)[-1] == (f"Error: cannot write to {out}: File too large; pass "
                                      "--out a file path in a writable folder")
    assert not out.exists() and list(out.parent.iterdir()) == []  # no temp file left


def test_output_errors_names_the_output_and_leaves_other_errors_alone(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = tmp_path / "results" / "out.txt"
    scratch = out.parent / f".{out.name}.tmp-1" / "part"  # in a scratch folder beside out
    with pytest.raises(CelebhpoError) as caught, output_errors(out, "--out"), open(scratch, "w"):
        pass
    assert str(caught.value) == (f"cannot write to {out}: No such file or directory; pass "
                                 "--out a file path in a writable folder")
    with pytest.raises(FileExistsError), output_errors(out, "--out"):  # passes unchanged
        atomic_write(blocker / "elsewhere.txt", "not our output")


# -- 2. predict with nothing readable ---------------------------------------------------------
def test_predict_with_no_readable_input_exits_1(model_dir, tmp_path):
    broken, empty = tmp_path / "broken.jpg", tmp_path / "empty.png"
    broken.write_bytes(b"this is not a jpeg")
    empty.write_bytes(b"")
    result = CliRunner().invoke(cli, ["predict", str(model_dir), str(broken), str(empty)])
    assert result.exit_code == 1, result.output
    (line,) = lines(result.output)
    assert line.startswith(f"Error: none of the 2 input images could be read: {broken}: "
                           "cannot decode (")
    assert f"; {empty}: cannot decode (" in line
    assert line.endswith("; check the files (or the paths)")


def test_retrieve_with_no_readable_image_exits_1(model_dir, tmp_path, cache_env):
    photos = tmp_path / "photos"
    photos.mkdir()
    for n in range(5):
        (photos / f"{n}.jpg").write_bytes(b"not a jpeg")
    result = CliRunner().invoke(cli, ["retrieve", str(model_dir), str(photos), "--where", "Male"])
    assert result.exit_code == 1, result.output
    (line,) = lines(result.output)
    assert line.startswith(f"Error: none of the 5 images in {photos} could be read: 0.jpg: "
                           "cannot decode (")
    assert "; and 2 more; check the files" in line


# -- 3. --top below 1 -------------------------------------------------------------------------
@pytest.mark.parametrize("top", ["0", "-3"])
def test_retrieve_top_below_one_is_refused(top, model_dir, synth_root, tmp_path, cache_env):
    photos = faces(synth_root, tmp_path / "photos")
    result = CliRunner().invoke(cli, ["retrieve", str(model_dir), str(photos), "--where",
                                      "not Bald or Bald", "--top", top])
    assert result.exit_code == 1  # one line, exit 1, as every error (issue 24)
    assert lines(result.output) == [f"Error: Invalid value for '--top': {top} is not in the "
                                     "range x>=1; see `celebhpo retrieve -h`"]
    assert not cache_env.exists()  # nothing predicted


# -- 4. an extra label column -----------------------------------------------------------------
def test_extra_label_column_is_one_warning_line(synth_root, tmp_path):
    root = tmp_path / "celeba"
    root.mkdir()
    (root / "img_align_celeba").symlink_to(synth_root / "img_align_celeba")
    shutil.copy(synth_root / "list_eval_partition.csv", root)
    rows = (synth_root / "list_attr_celeba.csv").read_text().splitlines()
    (root / "list_attr_celeba.csv").write_text(
        "\n".join([rows[0] + ",Notes"] + [r + ",x" for r in rows[1:]]) + "\n")
    result = CliRunner().invoke(cli, ["data", "inspect", str(root), "--json",
                                      "--out", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    assert lines(result.stderr) == [f"warning: {root / 'list_attr_celeba.csv'}:1: ignoring 1 "
                                    "column(s) that are not CelebA attributes: 'Notes'"]


# -- 6. PIL's decompression-bomb limits -------------------------------------------------------
@pytest.fixture
def small_bomb_limit(monkeypatch, tmp_path) -> tuple[Path, Path]:
    """PIL's limit at 1,000 pixels (warning) / 2,000 (error), and an image over each."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    rng = np.random.default_rng(0)
    over_warning, over_error = tmp_path / "big.png", tmp_path / "huge.png"
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(over_warning)
    Image.fromarray(rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)).save(over_error)
    return over_warning, over_error


def test_decompression_bomb_limits_in_load_image(small_bomb_limit):
    over_warning, over_error = small_bomb_limit
    with pytest.warns(UserWarning) as seen:
        arr = load_image(over_warning, SIZE)
    assert arr.shape == (SIZE, SIZE, 3)
    assert [str(w.message) for w in seen] == [
        f"{over_warning}: 1,200 pixels, over PIL's decompression-bomb warning limit of 1,000; "
        "decoded anyway"]
    with pytest.raises(DataError) as caught:
        load_image(over_error, SIZE)
    assert str(caught.value) == f"{over_error}: image too large: 2,500 pixels (PIL's limit 2,000)"


def test_decompression_bombs_in_predict_are_one_line_each(small_bomb_limit, model_dir):
    over_warning, over_error = small_bomb_limit
    result = CliRunner().invoke(cli, ["predict", str(model_dir), str(over_warning),
                                      str(over_error), "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert lines(result.stderr) == [
        f"warning: {over_warning}: 1,200 pixels, over PIL's decompression-bomb warning limit of "
        "1,000; decoded anyway",
        f"skipped {over_error}: image too large: 2,500 pixels (PIL's limit 2,000)"]
    assert lines(result.stdout)[1].startswith(f"{over_warning},")
