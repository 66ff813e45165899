"""Training curves through Lightning's own loggers.

Every sub-run writes a CSV log (``logs/version_<n>/metrics.csv`` in its run folder; a resumed run
adds a version, so nothing logged before a crash is deleted), which the report's loss curve reads.
``--logger tensorboard`` or ``mlflow`` adds that logger when the optional extra is installed.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger

from pdd.errors import ConfigError
from pdd.runs.folder import LOG_FOLDER

__all__ = ["LOGGERS", "build_loggers", "check_logger"]

LOGGERS = ("csv", "tensorboard", "mlflow")
# logger -> (module it needs, the pdd extra that installs it)
_NEEDS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}


def check_logger(kind: str) -> None:
    """Refuse an unknown logger, or one whose package is missing, before anything is written."""
    if kind not in LOGGERS:
        raise ConfigError(f"logger: expected one of {', '.join(LOGGERS)}, got {kind!r}")
    if kind in _NEEDS:
        module, extra = _NEEDS[kind]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"--logger {kind} needs the {module!r} package: pip install 'pdd[{extra}]'"
            )


def build_loggers(kind: str, run_folder: Path, run_name: str) -> list[Logger]:
    """The CSV logger, plus the requested one (TensorBoard under ``logs/``, MLflow as configured
    by ``MLFLOW_TRACKING_URI``, else an SQLite store ``mlflow.db`` in the run folder)."""
    check_logger(kind)
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_folder), name=LOG_FOLDER)]
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_folder), name=LOG_FOLDER))
    elif kind == "mlflow":
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run_folder / 'mlflow.db').resolve()}"
        loggers.append(_mlflow_logger(run_name, uri))
    return loggers


def _mlflow_logger(run_name: str, uri: str) -> Logger:
    """The MLflow logger, its store reached now, once, without mlflow's minutes of retries: a
    tracking URI that is wrong or down is a one-line ``ConfigError`` before training, not a
    traceback after it."""
    from lightning.pytorch.loggers import MLFlowLogger

    retries = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
    before = os.environ.get(retries)
    os.environ.setdefault(retries, "0")
    try:
        logger = MLFlowLogger(experiment_name="pdd", run_name=run_name, tracking_uri=uri)
        logger.experiment  # noqa: B018 - creates the experiment and run in the store
    except Exception as exc:  # mlflow raises many types for a bad store
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ConfigError(f"--logger mlflow: tracking URI {uri!r} is unusable ({text})") from exc
    finally:
        if before is None:
            os.environ.pop(retries, None)
    return logger

