"""`repro run all` on a node with GPUs: each recipe's process sees one GPU, the least used; workers default to the
GPU count on a node of several. Tested on the CPU by what each child is given (real forked children)."""
import json
import os
import time

from rich.console import Console

from framework.workers import default_workers, gpu_of, run_side_by_side, visible_gpus


def test_each_child_sees_one_gpu_and_running_children_never_share_one(tmp_path):
    record = tmp_path / "seen"
    record.mkdir()

    def command(args):  # the child: what it was given, and when it ran
        name = args[1]
        start = time.time()
        time.sleep(0.3 + 0.1 * int(name[-1]))
        (record / f"{name}.json").write_text(json.dumps({"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                                         "start": start, "end": time.time()}))
    names = [f"recipe{i}" for i in range(7)]
    codes, stop = run_side_by_side(names, [], tmp_path / "logs", 3, Console(file=open(os.devnull, "w")), command,
                                   gpus=["0", "1", "2"])
    assert codes == {n: 0 for n in names} and stop is None
    seen = {n: json.loads((record / f"{n}.json").read_text()) for n in names}
    assert all(s["gpu"] in ("0", "1", "2") for s in seen.values())
    for a in names:
        for b in names:
            overlap = seen[a]["start"] < seen[b]["end"] and seen[b]["start"] < seen[a]["end"]
            if a < b and overlap:
                assert seen[a]["gpu"] != seen[b]["gpu"], (a, b, seen[a], seen[b])
    assert {s["gpu"] for s in seen.values()} == {"0", "1", "2"}


def test_gpus_come_from_the_allocation_and_set_the_default_workers(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5,7,9")
    assert visible_gpus() == ["2", "5", "7", "9"] and default_workers() == 4
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")          # none visible: one suite per CPU, no GPU given
    assert visible_gpus() == [] and default_workers() == len(os.sched_getaffinity(0))
    assert gpu_of(["5", "5", "2"], ["2", "5", "7"]) == "7" and gpu_of([], []) is None


def test_run_all_shows_each_recipes_progress_in_the_parent(tmp_path, monkeypatch):
    """Real suites in forked children (the CLI's run command): the parent, whose output is no terminal, prints a
    line every heartbeat with each running recipe's runs done of its total, read from what the child wrote."""
    import framework.suite
    from framework.cli import app
    monkeypatch.setattr(framework.suite, "HEARTBEAT_S", 0.5)
    out = tmp_path / "parent.txt"
    child = ["--scale", "smoke", "--seeds", "1", "tracking.mode=disabled", "--runs-dir", str(tmp_path / "runs"),
             "--reports-dir", str(tmp_path / "reports")]
    with open(out, "w") as f:
        codes, stop = run_side_by_side(["double_descent", "random_labels"], child, tmp_path / "logs", 2,
                                       Console(file=f, width=200), lambda args: app(args=args, prog_name="repro"),
                                       gpus=[])
    assert codes == {"double_descent": 0, "random_labels": 0} and stop is None
    lines = [line for line in out.read_text().splitlines() if line.startswith("running: ")]
    assert any("double_descent" in line and " of 4 runs" in line for line in lines), out.read_text()
    assert any("random_labels" in line for line in lines), out.read_text()
    done = json.loads((tmp_path / "logs" / "double_descent.progress.json").read_text())
    assert done["done"] == done["total"] == 4
