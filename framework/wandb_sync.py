"""What `repro sync` uploads: one W&B run per training run, however many attempts wrote it, and each report's
latest verdict run.

A run preempted and resumed from its checkpoint wrote one offline folder per attempt, all with its id; each
attempt's history restarts at W&B step 0 (offline, the resumed attempt cannot know where the first stopped), so
`wandb sync` of the folders one after another would leave the server with the last attempt's rows over the first's.
The attempts are merged here into one offline run (the earlier attempts' rows before the step the next one resumed
from, then the next one's), and that is what is uploaded. By hand: wandb has no merge of offline runs.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from framework.wandb_files import merged_history, offline_runs, read_run

MERGED = "merged"  # <run>/wandb/merged/: the merged run and the list of attempts it holds


@dataclass
class Upload:
    kind: str  # "training" or "report"
    folder: Path  # the offline-run folder wandb sync is given
    attempts: int = 1  # the training run's attempts merged into `folder`
    superseded: int = 0  # a report's earlier verdict runs (same id, older), left out

    @property
    def synced(self) -> bool:
        return any(self.folder.glob("*.wandb.synced"))  # wandb sync's own marker


def merge(run_dir: Path, attempts: list[Path]) -> Path:
    """One offline run holding every attempt's history (config and tags of the last attempt, its summary over the
    merged rows'); rebuilt when the attempts changed. Returns its offline-run folder."""
    import wandb

    from framework.tracking import finish_run
    home = run_dir / "wandb" / MERGED
    names = [a.name for a in attempts]
    done = offline_runs(home)
    if done and (home / "attempts.json").exists() and json.loads((home / "attempts.json").read_text()) == names:
        return done[-1]
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    records = [read_run(a) for a in attempts]
    last = records[-1]
    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(mode="offline", id=last["id"], project=last["project"] or None, entity=last["entity"] or None,
                     name=last["name"] or None, group=last["group"] or None, job_type=last["job_type"] or None,
                     tags=last["tags"], config={k: v for k, v in last["config"].items() if not k.startswith("_")},
                     dir=str(home), reinit="create_new",
                     settings=wandb.Settings(console="off", x_disable_stats=True, silent=True))
    for glob in sorted(set().union(*(r["hidden"] for r in records))):
        run.define_metric(glob, hidden=True)
    for row in merged_history(records):
        run.log(row)
    run.summary.update({k: v for k, v in last["summary"].items() if not k.startswith("_")})
    finish_run(run)
    (home / "attempts.json").write_text(json.dumps(names))
    return offline_runs(home)[-1]


def plan(runs_dir: Path, reports_dir: Path) -> list[Upload]:
    """Every offline W&B run the commands wrote under the store (runs/<exp>/<run>/wandb/, attempts merged) and
    the reports (reports/<exp>/<scale>/wandb/, the latest verdict run of each suite and scale)."""
    uploads = []
    for run_dir in sorted({p.parent.parent for p in runs_dir.glob("*/*/wandb/offline-run-*")}):
        attempts = offline_runs(run_dir)
        folder = attempts[0] if len(attempts) == 1 else merge(run_dir, attempts)
        uploads.append(Upload("training", folder, attempts=len(attempts)))
    for report in sorted({p.parent.parent for p in reports_dir.glob("*/*/wandb/offline-run-*")}):
        folders = offline_runs(report)
        by_id: dict[str, list[Path]] = {}
        for f in folders:  # oldest first: the last of an id is its latest report
            by_id.setdefault(next(f.glob("run-*.wandb")).stem[len("run-"):], []).append(f)
        uploads += [Upload("report", fs[-1], superseded=len(fs) - 1) for fs in by_id.values()]
    return uploads


def describe(uploads: list[Upload]) -> list[str]:
    """What a sync does, in lines a user reads before and after it."""
    todo = [u for u in uploads if not u.synced]
    train = [u for u in todo if u.kind == "training"]
    merged = [u for u in train if u.attempts > 1]
    reports = [u for u in todo if u.kind == "report"]
    lines = [f"training runs: {len(train)} to upload"
             + (f" ({len(merged)} resumed, each merged from its {sum(u.attempts for u in merged)} attempts' folders "
                f"into one run with the whole history)" if merged else ""),
             f"report runs: {len(reports)} to upload (the latest verdict run of each suite and scale"
             + (f"; {sum(u.superseded for u in reports)} older reports of the same suites left out" if
                any(u.superseded for u in reports) else "") + ")"]
    lines += [f"  {u.folder.parent.parent.relative_to(u.folder.parents[3])}: {u.folder.name}" for u in reports]
    lines += [f"  merged: {u.folder.parents[4].name}/{u.folder.parents[3].name} ({u.attempts} attempts)"
              for u in merged]
    skipped = len(uploads) - len(todo)
    if skipped:
        lines.append(f"already synced: {skipped} (left alone)")
    return lines
