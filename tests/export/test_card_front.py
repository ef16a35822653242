"""Why this model (issue 24, items 2 and 3): the card of `export-best --trial N` in a study of
several metrics names the metrics, the trial's values, its rank and its place on the Pareto
front; a study whose constraints nobody meets keeps the closest trial's checkpoint, so the
advice `--trial N` works; `--set study.constraints.KEY=V` sets one constraint. Real Optuna,
real MLflow, real tiny trials."""

from __future__ import annotations

import json

import optuna
import pytest
from click.testing import CliRunner

from celebhpo.cli import cli
from celebhpo.export.card import why_chosen
from celebhpo.export.card_sections import choice_lines
from celebhpo.hpo import load_study
from celebhpo.hpo.measures import LATENCY_ATTR
from tests.helpers import write_study

TS = optuna.trial.TrialState


def _cli(*args: str) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_why_chosen_ranks_and_places_a_trial_on_or_off_the_front():
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("config", {"study": {"metric": "val_mean_acc",
                                             "objectives": ["val_mean_acc", "gflops"]}})
    for values in ((0.80, 0.10), (0.85, 0.30), (0.78, 0.30)):  # the last one is dominated
        study.add_trial(optuna.trial.create_trial(values=list(values)))
    off = why_chosen(study, study.trials[2], by_user=True)
    assert off["objectives"] == [
        {"metric": "val_mean_acc", "direction": "maximize", "value": 0.78},
        {"metric": "gflops", "direction": "minimize", "value": 0.30}]
    assert (off["by"], off["rank"], off["of"], off["rank_metric"]) == ("user", 3, 3,
                                                                       "val_mean_acc")
    assert off["front"] == [0, 1] and off["on_front"] is False
    card = {"chosen": {k: v for k, v in off.items() if k != "objectives"},
            "objectives": off["objectives"], "constraints": {}}
    text = "\n".join(choice_lines(card))
    assert "chosen by: the user" in text and "rank 3 of 3 completed trials by `val_mean_acc`" in text
    assert "**not on it**" in text and "the front holds 2 trials (0, 1)" in text
    assert "| gflops | minimize | 0.3000 |" in text
    on = why_chosen(study, study.trials[1], by_user=True)
    assert on["rank"] == 1 and on["on_front"] is True


def test_the_card_of_trial_n_names_the_metrics_and_its_place_on_the_front(tmp_path, synth_root):
    storage, uri = f"sqlite:///{tmp_path / 's.db'}", f"sqlite:///{tmp_path / 'm.db'}"
    path = write_study(tmp_path / "front.toml", synth_root, name="front",
                       space="lr = [0.003, 0.03]",
                       study_extra='metric = ["val_mean_acc", "gflops"]')
    _cli("study", "create", path, "--grid", "--storage", storage, "--tracking-uri", uri)
    _cli("optimize", "--study", "front", "--storage", storage, "--tracking-uri", uri)
    study = load_study("front", storage)[0]
    trials = study.get_trials(states=(TS.COMPLETE,))
    front = sorted(t.number for t in study.best_trials)
    # latency and cost are measured once per configuration (the lr changes neither): one
    # stored figure, the same GFLOPs for both trials
    assert len([k for k in study.user_attrs if k.startswith(LATENCY_ATTR)]) == 1
    assert len({t.user_attrs["gflops"] for t in trials}) == 1
    assert all(t.user_attrs["gflops"] > 0 and t.user_attrs["latency_threads"] == 1.0
               for t in trials)
    for t in trials:  # a dominated trial if there is one, and a trial of the front
        if t.number != front[0] and t.number in front and len(trials) > len(front):
            continue
        out = tmp_path / f"best{t.number}"
        _cli("export-best", "--study", "front", "--trial", str(t.number), "--out", out,
             "--storage", storage, "--tracking-uri", uri)
        card = json.loads((out / "model_card.json").read_text())
        md = (out / "model_card.md").read_text()
        assert [o["metric"] for o in card["objectives"]] == ["val_mean_acc", "gflops"]
        assert [o["value"] for o in card["objectives"]] == t.values
        rank = 1 + sum(o.values[0] > t.values[0] for o in trials)
        assert card["chosen"] == {"by": "user", "rank": rank, "of": len(trials),
                                  "rank_metric": "val_mean_acc", "front": front,
                                  "on_front": t.number in front}
        assert f"trial {t.number} of study `front`, chosen by the user" in md
        assert "| val_mean_acc | maximize |" in md and "| gflops | minimize |" in md
        assert (f"**on it**, one of {len(front)} trials" if t.number in front
                else "**not on it**") in md
        assert "GFLOPs per image" in md and "best trial" not in md


def test_constraints_nobody_meets_keep_the_closest_trial_exportable(tmp_path, synth_root):
    storage, uri = f"sqlite:///{tmp_path / 's.db'}", f"sqlite:///{tmp_path / 'm.db'}"
    path = write_study(tmp_path / "small.toml", synth_root, name="small",
                       space="num_features = [8, 64]",
                       study_extra="constraints = { max_gflops = 100 }")
    # the dotted form sets one constraint and keeps the file's
    _cli("study", "create", path, "--grid", "--set", "study.constraints.max_params_m=0.00001",
         "--storage", storage, "--tracking-uri", uri)
    _cli("optimize", "--study", "small", "--storage", storage, "--tracking-uri", uri)
    study, cfg = load_study("small", storage)
    assert cfg.study.constraints == {"max_gflops": 100.0, "max_params_m": 0.00001}
    refused = CliRunner().invoke(cli, ["export-best", "--study", "small", "--out",
                                       str(tmp_path / "x"), "--storage", storage,
                                       "--tracking-uri", uri])
    assert refused.exit_code == 1 and "meets its [study] constraints" in refused.output
    advised = int(refused.output.rsplit("--trial ", 1)[1].split()[0])
    closest = min(study.get_trials(states=(TS.COMPLETE,)), key=lambda t: t.user_attrs["params_m"])
    assert advised == closest.number and closest.user_attrs["checkpoint_logged"] is True
    out = tmp_path / "closest"
    _cli("export-best", "--study", "small", "--trial", advised, "--out", out,
         "--storage", storage, "--tracking-uri", uri)
    card = json.loads((out / "model_card.json").read_text())
    assert card["constraints"]["max_params_m"]["met"] is False
    assert card["constraints"]["max_gflops"]["met"] is True
    assert "constraints: NOT met: max_params_m" in (out / "model_card.md").read_text()
    for t in study.get_trials(states=(TS.COMPLETE,)):  # one without: says which have one
        if t.user_attrs["checkpoint_logged"] is False:
            r = CliRunner().invoke(cli, ["export-best", "--study", "small", "--trial",
                                         str(t.number), "--out", str(tmp_path / "y"),
                                         "--storage", storage, "--tracking-uri", uri])
            assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
            assert "kept no checkpoint" in r.output
            assert f"trials that kept one: {closest.number};" in r.output


def test_dotted_set_sets_one_constraint_and_names_what_is_not_a_table(tmp_path, synth_root):
    from celebhpo.config import load_study_file
    from celebhpo.errors import ConfigError

    path = write_study(tmp_path / "c.toml", synth_root,
                       study_extra="constraints = { max_gflops = 100 }")
    cfg = load_study_file(path, ["study.constraints.max_params_m=1"])
    assert cfg.study.constraints == {"max_gflops": 100.0, "max_params_m": 1.0}
    braces = load_study_file(path, ["study.constraints={ max_params_m = 1 }"])
    assert braces.study.constraints == {"max_params_m": 1.0}  # a whole table replaces
    for item, message in (("study.seed.x=1", r"\[study\] seed is not a table"),
                          ("study.constraints.max_parms_m=1", r"did you mean 'max_params_m'")):
        with pytest.raises(ConfigError, match=message):
            load_study_file(path, [item])


def test_study_show_flags_a_latency_that_stayed_noisy():
    from celebhpo.hpo import leaderboard

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("config", {"study": {"metric": "val_mean_acc",
                                             "objectives": ["val_mean_acc", "latency_ms"]}})
    for attrs in ({"latency_spread": 0.05, "latency_cpu_share": 0.98},
                  {"latency_spread": 0.34, "latency_cpu_share": 0.41}):
        study.add_trial(optuna.trial.create_trial(values=[0.8, 5.0], user_attrs={
            "gflops": 0.3, "params_m": 11.0, **attrs}))
    board = leaderboard(study).set_index("trial")
    assert list(board["latency_flag"]) == ["", "spread 34%, on-CPU 41%"]
    assert "gflops" in board.columns
    quiet = optuna.create_study()
    quiet.add_trial(optuna.trial.create_trial(value=0.3, user_attrs={"latency_spread": 0.05}))
    assert "latency_flag" not in leaderboard(quiet).columns  # nothing flagged: no column
