"""Training one configuration: the loop, models, metrics, checkpoints, devices, progress.

No Optuna and no MLflow in here (a study plugs in through callbacks), so this package and
celebhpo.data import on a GPU machine that has neither.
"""
