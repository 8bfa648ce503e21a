"""The suite's verdict run in W&B, beside its training runs: what `repro report` logs (docs/usage.md, Reports)."""
from __future__ import annotations

import json
from pathlib import Path

from framework.config import RunConfig
from framework.tracking import finish_run, wandb_group, wandb_mode


def log_report_run(verdict: dict, outdir: Path, tracking=None) -> None:
    """The suite's verdict run in W&B, beside its training runs (their project, entity and group: the experiment
    at its scale), with a stable id per suite and scale (a second report updates it, never duplicates it): the
    claims as a wandb.Table (quote, version, statistic, per-seed values, mean, interval, verdict), each claim's
    numbers in the summary under its key, the figures as images, and an artifact with verdict.json, the runs'
    table and the PDFs. tracking: the suite's TrackingConfig (default: the config's defaults)."""
    import os
    import re

    import wandb
    os.environ.setdefault("WANDB_SILENT", "true")
    tracking = tracking or RunConfig().tracking
    mode = wandb_mode(RunConfig(tracking=tracking))
    if mode == "disabled":
        return
    name, scale = verdict["experiment"], verdict["scale"]
    label = f"verdict-{wandb_group(name, scale)}"  # the run's id and its artifact's name
    run = wandb.init(project=tracking.project, entity=tracking.entity or None, group=wandb_group(name, scale),
                     job_type="verdict", mode=mode, id=re.sub(r"[^A-Za-z0-9_-]", "-", label)[:64],
                     resume="allow", name=f"verdict {name} [{scale}]", dir=str(outdir),
                     tags=[name, scale, "verdict"], reinit="finish_previous")
    try:
        columns = ["key", "claim", "quote", "version", "statistic", "per_seed", "mean", "interval_low",
                   "interval_high", "verdict"]
        table = wandb.Table(columns=columns)
        summary = {}
        for c in verdict["claims"]:
            key = c.get("key") or c["claim"][:40]
            lo, hi = c["interval"]
            table.add_data(key, c["claim"], c.get("quote", ""), c.get("version", 0), c["statistic"],
                           json.dumps(c["per_seed"]), c["mean"], lo, hi, c["verdict"])
            summary.update({f"{key}/verdict": c["verdict"], f"{key}/mean": c["mean"], f"{key}/interval_low": lo,
                            f"{key}/interval_high": hi, f"{key}/version": c.get("version", 0)})
        run.summary.update(summary)
        run.log({"claims": table, **{Path(f).stem: wandb.Image(str(outdir / f)) for f in verdict["figures"]
                                     if f.endswith(".png")}})
        artifact = wandb.Artifact(re.sub(r"[^A-Za-z0-9_.-]", "-", label), type="verdict")
        for f in ["verdict.json", "summary.csv", *[f for f in verdict["figures"] if f.endswith(".pdf")]]:
            if (outdir / f).exists():
                artifact.add_file(str(outdir / f))
        run.log_artifact(artifact)
    finally:
        finish_run(run)
