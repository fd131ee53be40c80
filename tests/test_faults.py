"""Faults a run survives: killed (SIGKILL, as a pre-empted job) while it saves a checkpoint, writes its output or
pushes; interrupted (Ctrl-C); a second writer of the same output; a full disk; leftovers of killed runs. The
killed runs are real processes (tests/fault_driver.py injects the fault at a chosen call); the rerun of the same
command resumes or starts clean, and leaves nothing behind."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from battery_helpers import assert_refused, error_line, leftovers, snapshot
from cli_helpers import dtm

DRIVER = Path(__file__).resolve().parent / "fault_driver.py"
STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_process_left():
    """A test that fails while its process waits at a fault does not leave the process behind."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.communicate()


def start(spec: str, command: str, *argv, ready: Path | None = None) -> subprocess.Popen:
    """`dtm-hf COMMAND ARGV` in a process of its own, with the fault `spec` injected (see fault_driver.py)."""
    options = ["--ready", str(ready)] if ready else []
    process = subprocess.Popen([sys.executable, str(DRIVER), spec, *options, "--", command, *map(str, argv)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    STARTED.append(process)
    return process


def finish(process: subprocess.Popen, timeout: int = 300) -> tuple[int, str]:
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def wait_for(path: Path, process: subprocess.Popen, timeout: int = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the process never reached the fault"
        time.sleep(0.1)


# ---- killed ------------------------------------------------------------------------------------------------------


def test_killed_while_saving_a_checkpoint_resumes_from_the_last_complete_one(world, tmp_path, capsys):
    """The SLURM pre-emption case: killed as checkpoint-2/ appears, before its trainer_state.json."""
    out = tmp_path / "out"
    argv = ["--config", world["recipe"], "--cluster", "cluster_0", "--output_dir", out, "--max_steps", 3,
            "--save_steps", 1]
    code, err = finish(start("kill-before@transformers.trainer_callback:TrainerState.save_to_json#2", "train", *argv))
    folder = out / "cluster_0"
    assert code == -signal.SIGKILL, err[-3000:]
    assert (folder / "checkpoint-1" / "trainer_state.json").is_file()
    assert (folder / "checkpoint-2").is_dir() and not (folder / "checkpoint-2" / "trainer_state.json").exists()
    for _ in range(2):  # every rerun works, the first one and those after it
        capsys.readouterr()
        assert dtm("train", *argv, *(["--overwrite"] if _ else [])) == 0
        said = "".join(capsys.readouterr())
        assert _ or ("resume from checkpoint-1" in said and "checkpoint-2 was not saved whole" in said), said[-3000:]
        assert json.loads((folder / "dtm_train.json").read_text())["global_step"] == 3
        assert not [p.name for p in folder.iterdir() if "checkpoint" in p.name] and leftovers(folder) == []


def test_killed_while_distribute_writes_then_the_same_command_succeeds(world, tmp_path):
    out = tmp_path / "out"
    argv = ["--dataset", world["data_file"], "--n_clusters", 2, "--output_dir", out]
    code, err = finish(start("kill-after@dtm_hf.data.repo:_write_config#1", "distribute", *argv))
    assert code == -signal.SIGKILL, err[-3000:]
    assert not out.exists() and any(name.startswith(".out.tmp-") for name in leftovers(out))
    assert dtm("distribute", *argv) == 0
    assert (out / "stats.json").is_file() and leftovers(out) == []


@pytest.mark.parametrize(("route", "spec"), [
    ("stream", "kill-after@dtm_hf.merging.stream.writer:StreamingShardWriter.write#5"),
    ("mergekit", "kill-after@mergekit.io.tensor_writer:TensorWriter.save_tensor#5"),
])
def test_killed_while_merge_writes_then_the_same_command_succeeds(world, route, spec, tmp_path):
    out = tmp_path / "out"
    argv = ["--submodels", world["train"], "--output_dir", out, "--lora_route", route]
    code, err = finish(start(spec, "merge", *argv))
    assert code == -signal.SIGKILL, err[-3000:]
    tmp = [tmp_path / name for name in leftovers(out) if name.startswith(".out.tmp-")]
    assert not out.exists() and tmp
    if route == "mergekit":  # mergekit's cache of merged copies lives inside the temporary output
        assert list(tmp[0].glob(".lora-merge-cache-*"))
    assert dtm("merge", *argv) == 0
    assert (out / "model.safetensors").is_file() and leftovers(out) == []
    assert not list(out.glob(".lora-merge-cache-*"))


def test_killed_while_pushing_then_the_same_command_pushes(world, tmp_path, hub_server, capsys):
    out = tmp_path / "out"
    argv = ["--config", world["recipe"], "--cluster", "cluster_1", "--output_dir", out, "--push_to_hub", "true",
            "--hub_model_id", "tester/killed-push-{cluster}"]
    code, err = finish(start("kill-before@huggingface_hub.hf_api:HfApi.create_commit", "train", *argv))
    assert code == -signal.SIGKILL, err[-3000:]
    assert json.loads((out / "cluster_1" / "dtm_train.json").read_text())["hub_model_id"] is None
    capsys.readouterr()
    assert dtm("train", *argv) == 0
    assert "complete; push to tester/killed-push-cluster_1" in capsys.readouterr().out
    assert "adapter_model.safetensors" in hub_server.repo_files("tester/killed-push-cluster_1")
    assert json.loads((out / "cluster_1" / "dtm_train.json").read_text())["hub_model_id"] == "tester/killed-push-" \
                                                                                             "cluster_1"


# ---- Ctrl-C and a second writer ------------------------------------------------------------------------------------


def test_ctrl_c_and_a_second_writer(world, tmp_path, capsys):
    """A distribute at work holds its output: a second one gets one line naming it; Ctrl-C ends the first with one
    line and exit 130, leaving nothing; then the output is free."""
    out, ready = tmp_path / "out", tmp_path / "ready"
    argv = ["--dataset", world["data_file"], "--n_clusters", 2, "--output_dir", out]
    first = start("pause@dtm_hf.data.repo:write_configs", "distribute", *argv, ready=ready)
    wait_for(ready, first)
    second_writer_refused(capsys, "distribute", [*argv, "--n_clusters", 3], out, first.pid)
    first.send_signal(signal.SIGINT)
    code, err = finish(first)
    assert code == 130 and "Traceback" not in err, err[-3000:]
    assert [line for line in err.splitlines() if "error:" in line] == [
        "dtm-hf distribute: error: interrupted; rerun the same command to resume (finished work is kept)"]
    assert not out.exists() and leftovers(out) == []
    assert dtm("distribute", *argv) == 0


def test_ctrl_c_while_training_then_resume(world, tmp_path, capsys):
    out, ready = tmp_path / "out", tmp_path / "ready"
    argv = ["--config", world["recipe"], "--cluster", "cluster_1", "--output_dir", out, "--max_steps", 3,
            "--save_steps", 1]
    process = start("pause@transformers.trainer:Trainer.training_step#2", "train", *argv, ready=ready)
    wait_for(ready, process)
    process.send_signal(signal.SIGINT)
    code, err = finish(process)
    assert code == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == ("dtm-hf train: error: interrupted; rerun the same command to resume "
                                            "(finished work is kept)")
    capsys.readouterr()
    assert dtm("train", *argv) == 0
    assert "resume from checkpoint-1" in capsys.readouterr().out


def second_writer_refused(capsys, command: str, argv: list, out: Path, holder: int) -> None:
    """One line naming the holder, and nothing written to `out` (which the holder may have begun)."""
    before = snapshot(out.parent)
    capsys.readouterr()
    assert dtm(command, *argv) == 2
    assert f"{out} is being written by process {holder} on " in error_line(capsys, command)
    assert snapshot(out.parent) == before


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize(("command", "target"), [
    ("distribute", "dtm_hf.data.repo.write_metadata"),
    ("merge", "dtm_hf.merging.stream.writer.StreamingShardWriter.write"),
    ("evaluate", "dtm_hf.evaluation.loss.cluster_loss"),
    ("run", "dtm_hf.distribute.main"),
])
def test_ctrl_c_in_each_command(world, command, target, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    argv = {"distribute": ["--dataset", world["data_file"], "--n_clusters", 2, "--output_dir", out],
            "merge": ["--submodels", world["train"], "--output_dir", out],
            "evaluate": ["--models", f"base={world['base']}", "--dataset", world["data"], "--held_out", 0.3,
                         "--output_dir", out],
            "run": ["--config", _distribute_recipe(world, tmp_path), "--run_dir", out,
                    "--stages", "distribute"]}[command]
    monkeypatch.setattr(target, _interrupt)
    if command == "run":  # the run folder holds the recipe as run and the stage's unfinished record; no data
        assert_refused(capsys, command, argv, "interrupted; rerun the same command to resume", out / "data", code=130)
        assert sorted(p.name for p in out.iterdir()) == [".digests.json", "recipe.yaml", "run_state.json"]
        assert json.loads((out / "run_state.json").read_text())["distribute"]["finished"] is False
        assert leftovers(out) == []
    else:
        assert_refused(capsys, command, argv, "interrupted; rerun the same command to resume", out, code=130)


def _distribute_recipe(world, tmp_path) -> Path:
    path = tmp_path / "dtm.yaml"
    path.write_text(yaml.safe_dump({"distribute": {"dataset": str(world["data_file"]), "n_clusters": 2}}))
    return path


@pytest.mark.parametrize("command", ["distribute", "merge", "evaluate", "train", "run"])
def test_a_second_writer_is_named_the_holder(world, command, tmp_path, capsys):
    from dtm_hf.outputs import output_lock

    out = tmp_path / "out"
    argv = {"distribute": ["--dataset", world["data_file"], "--n_clusters", 2, "--output_dir", out],
            "merge": ["--submodels", world["train"], "--output_dir", out],
            "evaluate": ["--models", f"base={world['base']}", "--dataset", world["data"], "--output_dir", out],
            "train": ["--config", world["recipe"], "--cluster", "cluster_0", "--output_dir", tmp_path],
            "run": ["--config", _distribute_recipe(world, tmp_path), "--run_dir", out,
                    "--stages", "distribute"]}[command]
    held = tmp_path / "cluster_0" if command == "train" else out
    with output_lock(held):
        second_writer_refused(capsys, command, argv, held, os.getpid())
    assert leftovers(held) == [] and not held.exists()


def test_output_filled_while_working_is_not_replaced(world, tmp_path, monkeypatch, capsys):
    """The "not empty" check is made again at the final rename: a folder filled meanwhile (by a process that holds
    no lock) is left as it is."""
    from dtm_hf.data import repo

    out = tmp_path / "out"
    write_metadata = repo.write_metadata

    def and_someone_else_writes(folder, *args):
        write_metadata(folder, *args)
        out.mkdir()
        (out / "theirs.txt").write_text("theirs")

    monkeypatch.setattr(repo, "write_metadata", and_someone_else_writes)
    capsys.readouterr()
    assert dtm("distribute", "--dataset", world["data_file"], "--n_clusters", 2, "--output_dir", out) == 2
    assert "is not empty; pass --overwrite" in error_line(capsys, "distribute")
    assert [p.name for p in out.iterdir()] == ["theirs.txt"] and leftovers(out) == []


# ---- leftovers, modes, state ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["distribute", "merge", "evaluate"])
def test_leftovers_of_killed_runs_are_removed_by_the_next_run(world, command, tmp_path):
    out = tmp_path / "out"
    stale = tmp_path / ".out.tmp-killed"
    (stale / ".lora-merge-cache-abc" / "model").mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"\0" * 1000)
    (tmp_path / ".out.lock").write_text("process 1 on a node that was pre-empted")
    argv = {"distribute": ["--dataset", world["data_file"], "--n_clusters", 2, "--output_dir", out],
            "merge": ["--submodels", world["train"], "--output_dir", out, "--lora_route", "mergekit"],
            "evaluate": ["--models", f"base={world['base']}", "--dataset", world["data"], "--held_out", 0.3,
                         "--output_dir", out]}[command]
    assert dtm(command, *argv) == 0
    assert leftovers(out) == [] and out.is_dir()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_follow_the_umask(world, umask, tmp_path):
    old = os.umask(umask)
    try:
        assert dtm("distribute", "--dataset", world["data_file"], "--n_clusters", 2, "--output_dir",
                   tmp_path / "out") == 0
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (tmp_path / "out" / "stats.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_unreadable_run_state_is_set_aside_and_rewritten_whole(world, tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["--config", _distribute_recipe(world, tmp_path), "--run_dir", run_dir, "--stages", "distribute"]
    assert dtm("run", *argv) == 0
    (run_dir / "run_state.json").write_text('{"distribute": {"fingerp')  # as a non-atomic write killed midway
    capsys.readouterr()
    assert dtm("run", *argv) == 0
    assert "run_state.json is unreadable; every stage runs again" in "".join(capsys.readouterr())
    assert set(json.loads((run_dir / "run_state.json").read_text())) == {"distribute"}
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]


# ---- full disks ----------------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 64 KiB (root only; skipped where mounting is not allowed): `resize(size)` remounts it."""
    disk = tmp_path / "disk"
    disk.mkdir()

    def mount(*options):
        return subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(disk)],
                              capture_output=True).returncode == 0

    if shutil.which("mount") is None or not mount("size=64k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield SimpleNamespace(path=disk, resize=lambda size: mount("remount", f"size={size}"))
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.parametrize("command", ["distribute", "merge", "merge-adapter", "evaluate", "train"])
def test_full_disk(world, command, small_disk, tmp_path, capsys):
    out = small_disk.path / "out"
    argv = {"distribute": ["--dataset", world["data_file"], "--n_clusters", 2, "--output_dir", out],
            "merge": ["--submodels", world["train"], "--output_dir", out],
            "merge-adapter": ["--submodels", world["train"], "--output_dir", out, "--output_format", "adapter"],
            "evaluate": ["--models", f"base={world['base']}", "--dataset", world["data"], "--held_out", 0.3,
                         "--output_dir", out],
            "train": ["--config", world["recipe"], "--cluster", "cluster_0", "--output_dir", out, "--save_steps", 1,
                      "--max_steps", 2]}[command]
    command = command.partition("-")[0]
    if command in ("distribute", "evaluate"):  # small outputs: the disk is all but full already
        (small_disk.path / "filler").write_bytes(b"\0" * 56 * 1024)
    capsys.readouterr()
    assert dtm(command, *argv) == 2
    line = error_line(capsys, command)
    assert "no space left on device writing" in line and str(out) in line and "free space and rerun" in line, line
    if command == "train":  # finished work is kept (a checkpoint, perhaps), the sub-model is not marked complete
        assert not (out / "cluster_0" / "dtm_train.json").exists()
    else:
        assert not out.exists()
    assert leftovers(out) == [] and leftovers(out / "cluster_0") == []
    small_disk.resize("64m")
    (small_disk.path / "filler").unlink(missing_ok=True)
    assert dtm(command, *argv) == 0


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),
    OSError(errno.EDQUOT, "Disk quota exceeded"),
])
def test_full_disk_however_a_library_says_it(world, error, tmp_path, monkeypatch, capsys):
    """Without a small disk to fill: the ways libraries report one, raised where the output is written."""
    from dtm_hf.data import repo

    def full(*args, **kwargs):
        raise error

    monkeypatch.setattr(repo, "write_metadata", full)
    out = tmp_path / "out"
    word = "disk quota exceeded" if "quota" in str(error) else "no space left on device"
    line = assert_refused(capsys, "distribute", ["--dataset", world["data_file"], "--n_clusters", 2, "--output_dir",
                                                 out], f"{word} writing {out}; free space and rerun", out)
    assert snapshot(world["data_file"]) and line
