"""A read-only data root (a shared copy of CelebA) works by default (issue 24): `data
inspect`, `study create` and `optimize` run; the plots go to the working folder and the decode
cache to the user cache folder, each named in one warning line.

Root is not stopped by file modes here, but a read-only bind mount stops it: the synthetic
faces are mounted read-only under the test's folder (their source stays writable for the
other tests) and unmounted after."""

from __future__ import annotations

import subprocess

import pytest
from click.testing import CliRunner

from celebhpo.cli import cli
from tests.helpers import write_study


@pytest.fixture
def readonly_root(synth_root, tmp_path):
    root = tmp_path / "celeba"
    root.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(synth_root), str(root)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount a read-only data root here: {mounted.stderr.strip()}")
    try:
        ro = subprocess.run(["mount", "-o", "remount,ro,bind", str(root)], capture_output=True,
                            text=True)
        if ro.returncode != 0:
            pytest.skip(f"cannot remount the data root read-only: {ro.stderr.strip()}")
        with pytest.raises(OSError):  # read-only for root too
            (root / "probe").write_text("x")
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def test_a_read_only_data_root_runs_inspect_create_and_optimize(readonly_root, tmp_path,
                                                                monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    user_cache = tmp_path / "user-cache"
    monkeypatch.setenv("CELEBHPO_CACHE_DIR", str(user_cache))

    inspect = CliRunner().invoke(cli, ["data", "inspect", str(readonly_root)])
    assert inspect.exit_code == 0, inspect.output
    assert inspect.stderr.splitlines() == [
        f"warning: {readonly_root} is read-only: the plots go to inspect-celeba instead (--out "
        "chooses another folder)"]
    assert sorted(p.name for p in (work / "inspect-celeba").iterdir()) == [
        "attribute_correlation.png", "attribute_frequency.png"]

    study = write_study(work / "ro.toml", readonly_root, name="ro", space="lr = [0.003]")
    created = CliRunner().invoke(cli, ["study", "create", str(study), "--grid",
                                       "--no-tracking"])
    assert created.exit_code == 0, created.output

    run = CliRunner().invoke(cli, ["optimize", "--study", "ro"])
    assert run.exit_code == 0, run.output
    (cache,) = (user_cache / "images").iterdir()
    assert cache.name.startswith("celeba-")
    warned = [line for line in run.stderr.splitlines() if line.startswith("warning:")]
    assert warned == [f"warning: {readonly_root} is read-only: decoded images are cached in "
                      f"{cache} instead (data.cache_dir chooses another folder)"]
    assert "trial 0 COMPLETE" in run.stdout
    assert len(list(cache.glob("images-16px-squash-*.npy"))) == 2  # train and val
    assert (work / "studies" / "celebhpo.db").is_file()  # the default storage, in the work folder
