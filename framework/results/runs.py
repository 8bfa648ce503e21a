"""The runs view a recipe measures its claims on: one row per run, in one column namespace, with the reads it
needs. A recipe never touches the store or a path; it selects runs by their grid axes and asks for a run's curve.

Columns: run_id, variant, the grid axes (a named bundle's label under the axis name, e.g. `arch`), every config
key by its dotted name (`optim.lr`, `data.batch_size`: the one name, whether or not it is swept), the run's
summary (train_loss, steps_to_target, ...), and `status` (done, diverged, failed, pending, unusable, ...).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from framework.config import RunConfig, flatten, to_dict
from framework.overrides import apply
from framework.results.measures import FINISHED
from framework.store import RunStore

CONFIG_KEYS = frozenset(flatten(to_dict(RunConfig())))


class Runs(pd.DataFrame):
    """A recipe's runs (a pandas frame: filter, group and sort it as one) that also reads their curves.
    Rows selected from it keep the store they came from."""
    _metadata = ["store", "experiment"]

    def __init__(self, data=None, *args, store: RunStore | None = None, experiment: str = "", **kwargs):
        super().__init__(data, *args, **kwargs)
        # from another view unless given (pandas carries them through its own operations: _metadata); never
        # getattr on a plain frame, whose `experiment` is a column
        inherited = data if isinstance(data, Runs) else None
        self.store = store if store is not None else getattr(inherited, "store", None)
        self.experiment = experiment or getattr(inherited, "experiment", "")

    @property
    def _constructor(self):
        return Runs

    @property
    def grid_axes(self) -> list[str]:
        """The grid-axis columns (the seed among them)."""
        return list(self.attrs.get("axes", []))

    def matching(self, **axes) -> "Runs":
        """The runs with these values (a grid axis or any column); none when a column is absent. Floats match
        within rounding (a value read back from runs.csv)."""
        mask = pd.Series(True, index=self.index)
        for key, value in axes.items():
            if key not in self.columns:
                return self.iloc[:0]
            column = self[key]
            mask &= np.isclose(column.astype(float), value) if isinstance(value, float) else column == value
        return self[mask]

    def one(self, **axes) -> pd.Series | None:
        """The one run with these values (None when the grid has no such run)."""
        hits = self.matching(**axes)
        return hits.iloc[0] if len(hits) else None

    def curve(self, row: pd.Series | None, name: str = "metrics.csv") -> pd.DataFrame:
        """A run's per-step log (metrics.csv, or diagnostics.csv): empty unless the run finished (done or
        diverged), so a failed or unusable run's partial log never enters a claim."""
        if row is None or row.get("status") not in FINISHED:
            return pd.DataFrame()
        if self.store is None:
            raise RuntimeError("these runs carry no store to read curves from: build them with Runs(frame, store=...)")
        return self.store.read_frame(self.experiment or row["experiment"], row["run_id"], name)

    def curves(self, name: str = "metrics.csv") -> pd.DataFrame:
        """Every run's per-step log, joined with its grid axes (for figures)."""
        frames = []
        for _, row in self.iterrows():
            frame = self.curve(row, name)
            if not frame.empty:
                for col in ["run_id", "variant", *self.grid_axes]:
                    frame[col] = row[col]
                frames.append(frame)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def row_config(row: pd.Series) -> RunConfig:
    """The RunConfig of a runs-view row (from its config columns)."""
    return apply(RunConfig(), {k: v.item() if hasattr(v, "item") else v for k, v in row.items()
                               if k in CONFIG_KEYS and not _missing(v)})


def _missing(v) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def runs_frame(runs: list, store: RunStore) -> Runs:
    """The view of a suite's runs (framework.grid.Run: a config and its grid-axis values), read from the store.
    A finished run that cannot stand for its config has status "unusable" and no numbers."""
    rows = []
    for run in runs:
        exp = run.cfg.experiment
        status = store.status(exp, run.run_id)
        # the store's one check (a changed config.yaml is a UserError here, for `report` as for `run`); a finished
        # run that cannot stand for its config is no run of this suite: status "unusable", no numbers
        why = store.unusable(run.cfg, run.run_id) if status in FINISHED else None
        summary = store.summary(exp, run.run_id) if why is None else {"unusable": why}
        rows.append({"run_id": run.run_id, "variant": run.cfg.variant, **run.axes,
                     **{k: v for k, v in flatten(to_dict(run.cfg)).items() if not isinstance(v, list)},
                     **summary, "status": "unusable" if why else status})
    frame = Runs(rows, store=store, experiment=runs[0].cfg.experiment if runs else "")
    frame.attrs["axes"] = list(dict.fromkeys(a for run in runs for a in run.axes))
    return frame
