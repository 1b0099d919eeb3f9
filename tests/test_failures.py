"""Failures that say what happened (issue 22, deliverable 6): full disks and read-only directories,
shared files that are not what they claim, broken sweep directories, old override forms, a missing
--config-dir, half-written temp files in the cache, refused runs' stub directories. Each is one line
`<prog>: error: <key or path>: <what>` with exit code 2, and nothing half-written is left.

How the failures are made without root tricks (CI may have neither a small tmpfs nor mount rights):
- a full disk: in-process, advlab.utils.io's `os.write` fails with ENOSPC (`_FullDisk`), and torch.save
  fails as torch does on a full disk (RuntimeError "unexpected pos"); in real processes RLIMIT_FSIZE,
  where the kernel refuses every write past the limit (EFBIG; SIGXFSZ ignored): the same code paths.
- a read-only directory: chmod 0o555 when not root; root ignores modes (CI runs tests as root), so
  there the directory's parent is a regular file (ENOTDIR), a real failure of the same mkdir / mkstemp
  calls. The read-only wording (EROFS) is checked with an injected error.
"""
from __future__ import annotations

import errno
import gzip
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from advlab.preflight.jobs import precheck
from advlab.errors import ConfigError
from advlab.utils import io as advio
from advlab.utils.io import WriteError, check_writable, stale_temp_files

REPO = Path(__file__).resolve().parents[1]


# -- helpers ----------------------------------------------------------------------------------------

def unwritable_dir(tmp_path: Path) -> tuple[Path, str]:
    """A directory this process cannot create files in, and the cause its error names (see the docstring)."""
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        return ro / "target", "permission denied"
    blocker = tmp_path / "a_file"
    blocker.write_text("a regular file where a directory would be\n")
    return blocker / "target", "is a file, not a directory"


@pytest.fixture
def restore_modes(tmp_path):
    yield
    for p in tmp_path.rglob("*"):
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)


class _FullDisk:
    """advlab.utils.io's `os`: every write fails as on a full disk; records fsyncs; the rest is `os`."""

    def __init__(self, code: int = errno.ENOSPC):
        self.code, self.attempts = code, 0

    def write(self, fd, data):
        self.attempts += 1
        raise OSError(self.code, os.strerror(self.code))

    def __getattr__(self, name):
        return getattr(os, name)


class _Recording:
    """advlab.utils.io's `os`, recording the bytes written and the fsyncs."""

    def __init__(self):
        self.written, self.fsyncs = 0, 0

    def write(self, fd, data):
        n = os.write(fd, data)
        self.written += n
        return n

    def fsync(self, fd):
        self.fsyncs += 1
        os.fsync(fd)

    def __getattr__(self, name):
        return getattr(os, name)


def _one_line(text: str, prog: str, key: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    assert lines[0].startswith(f"{prog}: error: {key}"), lines[0]
    assert "Traceback" not in text
    return lines[0]


def _limit_file_size(limit: int):
    """preexec_fn: the kernel refuses writes past `limit` bytes per file (EFBIG), without killing the process."""
    def apply():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _app(root: Path, *args: str, module: str = "advlab.apps.train", preexec=None, warnings: str = "ignore") -> subprocess.CompletedProcess:
    """An advlab app as a user starts it, with ADVLAB_ROOT=root (its default outputs/ and cache/ there)."""
    env = {**os.environ, "ADVLAB_ROOT": str(root), "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONWARNINGS": warnings}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300, preexec_fn=preexec)


# -- full disks -------------------------------------------------------------------------------------

def test_the_probe_writes_real_bytes_flushes_them_and_leaves_nothing(tmp_path, monkeypatch):
    recording = _Recording()
    monkeypatch.setattr(advio, "os", recording)
    target = tmp_path / "new" / "run"
    assert check_writable(target, "hydra.run.dir") == target
    assert recording.written >= 64 * 1024 and recording.fsyncs >= 1  # not an empty file
    assert list(tmp_path.iterdir()) == []  # probed where it would be made; nothing created, nothing left


def test_a_full_disk_is_refused_although_an_empty_file_still_fits(tmp_path, monkeypatch):
    import tempfile

    from advlab.artifacts.cache import ArtifactCache

    monkeypatch.setattr(advio, "os", _FullDisk())
    with tempfile.NamedTemporaryFile(dir=tmp_path, prefix=".old-probe-"):
        pass  # the old probe (an empty file) passes on this disk
    with pytest.raises(ConfigError) as err:
        ArtifactCache(tmp_path / "cache")
    text = str(err.value)
    assert text.startswith(f"paths.cache_dir: {tmp_path / 'cache'}: ") and "disk full (no space left on device)" in text
    assert "\n" not in text and stale_temp_files(tmp_path / "cache") == []


def _torch_save_failing_as_on_a_full_disk(obj, f, *args, **kwargs):
    Path(f).write_bytes(b"PK\x03\x04 part of a zip")  # what torch wrote before the disk filled up
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


def test_a_cache_on_a_full_disk_says_disk_full_and_leaves_no_partial_artifact(tmp_path, monkeypatch):
    import torch

    from advlab.artifacts.cache import ArtifactCache

    cache = ArtifactCache(tmp_path / "cache")
    monkeypatch.setattr(torch, "save", _torch_save_failing_as_on_a_full_disk)
    monkeypatch.setattr(advio, "os", _FullDisk())
    spec = {"what": "a model", "seed": 0}
    with pytest.raises(WriteError) as err:
        cache.get_or_create("models", spec, lambda: {"w": torch.ones(3)})
    target = cache.path("models", spec)
    assert str(err.value) == f"{target}: cannot be written: disk full (no space left on device); nothing was replaced"
    kind_dir = target.parent
    assert not target.exists() and not target.with_suffix(".json").exists()  # no sidecar of a missing artifact
    assert stale_temp_files(kind_dir) == []


def test_a_failure_that_is_not_the_disk_is_not_called_one(tmp_path, monkeypatch):
    """torch.save failing for another reason (the disk has room): its own error, not a 'disk full'."""
    import torch

    def broken(obj, f, *args, **kwargs):
        raise RuntimeError("some other torch failure")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="some other torch failure"):
        advio.torch_save({"w": torch.ones(2)}, tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_real_write_limit_makes_torch_save_one_line(tmp_path):
    """A real kernel refusal (RLIMIT_FSIZE) under torch.save: torch reports only 'unexpected pos'."""
    target = tmp_path / "models" / "abc.pt"
    code = ("import torch, sys\nfrom advlab.utils.io import torch_save, WriteError\n"
            f"try:\n    torch_save({{'w': torch.zeros(200_000)}}, {str(target)!r})\n"
            "except WriteError as err:\n    print(err); sys.exit(2)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          preexec_fn=_limit_file_size(32 * 1024))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"{target}: cannot be written: file too large for its file system; nothing was replaced"
    assert list(target.parent.iterdir()) == []


def test_a_run_dir_that_cannot_take_a_file_is_refused_before_hydra_writes(tmp_path):
    """The writes Hydra makes first (.hydra/config.yaml) would be cut short: the pre-flight's probe
    (64 KiB, more than the 16 KiB the kernel allows here) refuses the run before any of them."""
    run_dir = tmp_path / "runs" / "r1"
    proc = _app(tmp_path, "logger=csv", f"hydra.run.dir={run_dir}", preexec=_limit_file_size(16 * 1024))
    line = _one_line(proc.stderr, "advlab-train", "hydra.run.dir")
    assert proc.returncode == 2 and str(run_dir) in line and "file too large" in line
    assert not (tmp_path / "runs").exists() and stale_temp_files(tmp_path) == []


def test_a_disk_that_fills_during_training_is_one_line_and_the_checkpoint_survives(tmp_path):
    """Writes of up to 256 KiB pass: the run starts and trains; its first checkpoint (larger) fails mid-run,
    as on a disk that fills up: one line naming the file, no traceback, no temp file left."""
    run_dir = tmp_path / "run"
    proc = _app(tmp_path, "method=standard", "logger=csv", "trainer.max_epochs=2", f"hydra.run.dir={run_dir}",
                preexec=_limit_file_size(256 * 1024))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and errors == proc.stderr.strip().splitlines()[-1:], proc.stderr
    assert re.fullmatch(rf"advlab-train: error: {re.escape(str(run_dir))}/checkpoints/\S+\.ckpt: cannot be written: "
                        r"file too large for its file system; nothing was replaced", errors[0]), errors[0]
    assert (run_dir / "train.log").is_file()  # work began: the run keeps its directory and log
    assert stale_temp_files(run_dir / "checkpoints") == [] and not list((run_dir / "checkpoints").glob("*.ckpt"))


# -- read-only directories --------------------------------------------------------------------------

def _hand_made_sweep(root: Path, jobs: int = 2) -> Path:
    sweep = root / "sweep"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({
        "hydra": {"overrides": {"task": [f"seed={','.join(map(str, range(jobs)))}"]}, "sweeper": {"params": None}, "mode": "MULTIRUN"},
        "task_name": "train"}))
    for num in range(jobs):
        (sweep / str(num)).mkdir()
        (sweep / str(num) / "metrics.json").write_text(json.dumps({"test/acc": 0.5 + 0.1 * num}))
    return sweep


def _unwritable_sites(target: Path, tmp_path: Path):
    """(key, the call that must refuse `target`) for every place a user names a directory to write."""
    from advlab.artifacts.cache import ArtifactCache
    from advlab.data.mnist_t10k import install_shared_mnist
    from advlab.report.sweep_report import write_report

    shared = tmp_path / "shared" / "data" / "mnist-t10k"
    shared.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(shared / f"{name}.gz", "wb") as f:
            f.write(b"\0\0\x08\x01\0\0\0\0")
    sweep = _hand_made_sweep(tmp_path)
    return [
        ("hydra.run.dir", lambda: precheck(["logger=csv", f"hydra.run.dir={target}"])),
        ("hydra.sweep.dir", lambda: precheck(["-m", "logger=csv", "seed=0,1", f"hydra.sweep.dir={target}"])),
        ("paths.cache_dir", lambda: ArtifactCache(target)),
        ("--data", lambda: install_shared_mnist(tmp_path / "shared", target)),
        ("--out", lambda: write_report(sweep, out_dir=target, wandb_mode="off")),
    ]


@pytest.mark.parametrize("site", ["hydra.run.dir", "hydra.sweep.dir", "paths.cache_dir", "--data", "--out"])
def test_an_unwritable_directory_is_one_line_naming_it_and_the_cause(tmp_path, restore_modes, site):
    target, cause = unwritable_dir(tmp_path)
    call = dict(_unwritable_sites(target, tmp_path))[site]
    with pytest.raises(ConfigError) as err:
        call()
    text = str(err.value)
    assert text.startswith(f"{site}: {target}") and cause in text and "\n" not in text, text
    assert not target.exists()


def test_a_read_only_file_system_is_named_so(tmp_path, monkeypatch):
    import tempfile

    def read_only(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(WriteError, match=r"^--out: .*: not writable: read-only file system"):
        check_writable(tmp_path / "report", "--out")
    with pytest.raises(WriteError, match=r": cannot be written: read-only file system$"):
        advio.write_text(tmp_path / "report.md", "x")


def test_a_read_only_run_dir_in_a_real_process(tmp_path, restore_modes):
    target, cause = unwritable_dir(tmp_path)
    proc = _app(tmp_path, "logger=csv", f"hydra.run.dir={target}")
    line = _one_line(proc.stderr, "advlab-train", "hydra.run.dir")
    assert proc.returncode == 2 and str(target) in line and cause in line
    assert not (tmp_path / "outputs").exists() and not target.exists()


# -- files that are not what they claim -------------------------------------------------------------

def _shared(tmp_path: Path, images: bytes, labels: bytes) -> Path:
    folder = tmp_path / "shared" / "data" / "mnist-t10k"
    folder.mkdir(parents=True)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(images)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(labels)
    return tmp_path / "shared"


def _idx(magic: int, shape: tuple[int, ...], extra: int = 0) -> bytes:
    import struct

    n = 1
    for d in shape:
        n *= d
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in shape) + bytes(n + extra)


GOOD_IMAGES, GOOD_LABELS = gzip.compress(_idx(2051, (3, 28, 28))), gzip.compress(_idx(2049, (3,)))
SHARED_CASES = [
    ("images", b"not gzip at all", GOOD_LABELS, "not a gzip file"),
    ("images", GOOD_IMAGES[: len(GOOD_IMAGES) // 2], GOOD_LABELS, "damaged gzip file: truncated or corrupt"),
    ("labels", GOOD_IMAGES, GOOD_IMAGES, "not an MNIST labels file: its IDX magic number is 2051, expected 2049"),
    ("images", gzip.compress(_idx(2051, (3, 28, 28), extra=-100)), GOOD_LABELS, "truncated or padded"),
]


@pytest.mark.parametrize("bad,images,labels,what", SHARED_CASES, ids=["not-gzip", "truncated-gzip", "wrong-kind", "short"])
def test_advlab_data_names_the_shared_file_and_what_is_wrong(tmp_path, capsys, bad, images, labels, what):
    from advlab.apps.data import main

    shared = _shared(tmp_path, images, labels)
    data = tmp_path / "data"
    assert main(["--shared", str(shared), "--data", str(data)]) == 2
    line = _one_line(capsys.readouterr().err, "advlab-data", str(shared / "data" / "mnist-t10k" / f"t10k-{bad}-idx"))
    assert what in line
    raw = data / "MNIST" / "raw"
    assert not raw.exists() or not any(p.name.startswith(f"t10k-{bad}") for p in raw.iterdir())  # nothing half-written
    if bad == "images":
        assert not data.exists()  # the first file failed: the folders made for it are gone


def test_advlab_data_installs_good_files(tmp_path, capsys):
    from advlab.apps.data import main

    assert main(["--shared", str(_shared(tmp_path, GOOD_IMAGES, GOOD_LABELS)), "--data", str(tmp_path / "data")]) == 0
    assert (tmp_path / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes() == _idx(2049, (3,))


# -- advlab-report on broken sweep directories ------------------------------------------------------

def test_report_names_invalid_yaml_with_its_line(tmp_path, capsys):
    from advlab.apps.report import main

    sweep = _hand_made_sweep(tmp_path)
    text = (sweep / "multirun.yaml").read_text()
    (sweep / "multirun.yaml").write_text(text + "broken: [1, 2\nnext: {\n")
    assert main([str(sweep), "--wandb", "off"]) == 2
    line = _one_line(capsys.readouterr().err, "advlab-report", str(sweep / "multirun.yaml"))
    assert re.search(r"invalid YAML at line \d+, column \d+: expected ',' or ']'", line), line
    assert not (sweep / "report").exists()


def test_report_names_an_unparsable_override(tmp_path, capsys):
    from advlab.apps.report import main

    sweep = _hand_made_sweep(tmp_path)
    multirun = yaml.safe_load((sweep / "multirun.yaml").read_text())
    multirun["hydra"]["overrides"]["task"].append("a=[1,")
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    assert main([str(sweep), "--wandb", "off"]) == 2
    line = _one_line(capsys.readouterr().err, "advlab-report", str(sweep / "multirun.yaml"))
    assert "unparsable override 'a=[1,'" in line


def test_report_names_a_metrics_file_that_is_not_a_mapping(tmp_path, capsys):
    """A job's bad metrics.json fails that job (named with its file), not the report of the others."""
    from advlab.apps.report import main

    sweep = _hand_made_sweep(tmp_path, jobs=3)
    (sweep / "0" / "metrics.json").write_text("[1, 2]")
    (sweep / "1" / "metrics.json").write_text(json.dumps({"test/acc": "n/a", "precision": "32-true"}))
    assert main([str(sweep), "--wandb", "off"]) == 1
    err = capsys.readouterr().err
    summary = [ln for ln in err.splitlines() if ln.startswith("advlab-report:")]
    assert summary == [f"advlab-report: 1 of 3 jobs failed or are missing: job 0 (seed=0): {sweep / '0' / 'metrics.json'}: "
                       "not a mapping of metric names to numbers (a JSON list)"]
    summary_csv = (sweep / "report" / "summary.csv").read_text().splitlines()
    assert summary_csv[1:] == ["all jobs,test/acc,0.7,,1,3"]  # job 2's number; job 1's text value is skipped


def test_report_reads_an_empty_error_file(tmp_path):
    from advlab.report.sweep import load_sweep

    sweep = _hand_made_sweep(tmp_path)
    (sweep / "1" / "metrics.json").unlink()
    (sweep / "1" / "error.txt").write_text("")
    assert load_sweep(sweep).jobs[1].error == "failed (error.txt is empty)"


# -- old forms, --config-dir ------------------------------------------------------------------------

OLD_FORMS = [  # (app, old form, key, the new form the message must name, a command line using it)
    ("train", ["method.optimizer.lr=-1"], "method.optimizer.lr", "use optimizer.lr=-1", ["optimizer.lr=0.01"]),
    ("train", ["+method.optimizer.lr=0.01"], "method.optimizer.lr", "use optimizer.lr=0.01", ["optimizer.lr=0.01"]),
    ("train", ["method.scheduler=one_cycle"], "method.scheduler", "use scheduler=one_cycle", ["scheduler=one_cycle"]),
    ("train", ["source.method.scheduler=step"], "source.method.scheduler", "use scheduler@source.scheduler=step",
     ["scheduler@source.scheduler=step"]),
    ("train", ["eval_attack=pgd_l3"], "eval_attack", "attack@eval_attack=<option>; unknown option 'pgd_l3'",
     ["attack@eval_attack=pgd_l2"]),
    ("transfer", ["source.dataset=stl10"], "source.dataset", "dataset@source.dataset=<option>; unknown option 'stl10'",
     ["dataset@source.dataset=digits"]),
    ("transfer", ["source.dataset.max_train=100"], "source.dataset.max_train", "choose one first with dataset@source.dataset=<option>",
     ["dataset@source.dataset=digits", "source.dataset.max_train=100"]),
    ("train", ["foo=1"], "foo", "unknown top-level key 'foo'; allowed: arch, attack,", None),
]


@pytest.mark.parametrize("app,old,key,hint,new", OLD_FORMS, ids=[c[1][0] for c in OLD_FORMS])
def test_an_old_form_names_the_right_new_form(app, old, key, hint, new):
    with pytest.raises(ConfigError) as err:
        precheck(old, app)
    text = str(err.value)
    assert text.startswith(f"{key}: ") and hint in text, text
    assert "To append to your config use +" not in text and f"+{key}" not in text
    if new is not None:
        precheck(new, app)  # the form it names is accepted


def test_a_config_dirs_options_are_named_as_options(tmp_path):
    (tmp_path / "attack").mkdir()
    (tmp_path / "attack" / "my_pgd.yaml").write_text((REPO / "conf" / "attack" / "pgd_l2.yaml").read_text())
    with pytest.raises(ConfigError) as err:
        precheck(["--config-dir", str(tmp_path), "eval_attack=my_pgd"])
    assert str(err.value).endswith("package syntax, attack@eval_attack=my_pgd")
    precheck(["--config-dir", str(tmp_path), "attack@eval_attack=my_pgd"])


def _documented_refused_forms() -> list[tuple[str, str, list[str]]]:
    """The docs' table of forms (docs/concepts/command-line.md, | what | type | not (refused, with the form
    to use) |): (app, refused form, the forms to type)."""
    page = (REPO / "docs" / "concepts" / "command-line.md").read_text()
    table = page[page.index("| what | type | not"):].split("\n\n")[0].splitlines()[2:]
    rows = []
    for row in table:
        _, typed, refused = (cell.strip() for cell in row.strip("|").split("|"))
        for form in re.findall(r"`([^`]+)`", refused):
            app = "eval" if "models." in form else "transfer" if form.startswith("target") else "train"
            rows.append((app, form, [t for f in re.findall(r"`([^`]+)`", typed) for t in f.split()]))
    return rows


@pytest.mark.parametrize("app,refused,typed", _documented_refused_forms(), ids=lambda v: v if isinstance(v, str) and "=" in v else None)
def test_every_form_the_docs_refuse_names_a_form_they_say_to_type(app, refused, typed):
    with pytest.raises(ConfigError) as err:
        precheck([refused], app)
    text = str(err.value)
    assert "To append to your config use +" not in text, text
    assert any(t.lstrip("+").split("=")[0] + "=" in text for t in typed), (text, typed)


def test_a_missing_config_dir_says_so(tmp_path):
    with pytest.raises(ConfigError, match=rf"^--config-dir: {re.escape(str(tmp_path / 'nope'))} does not exist"):
        precheck(["--config-dir", str(tmp_path / "nope"), "experiment=mine"])
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is not a directory"):
        precheck(["--config-dir", str(tmp_path / "file")])


def test_a_missing_config_dir_in_a_real_process(tmp_path):
    proc = _app(tmp_path, "--config-dir", str(tmp_path / "nope"), "experiment=mine", warnings="default")
    line = _one_line(proc.stderr, "advlab-train", "--config-dir")
    assert proc.returncode == 2 and "does not exist" in line and "UserWarning" not in proc.stderr
    assert not (tmp_path / "outputs").exists()


# -- half-written temp files in the cache -----------------------------------------------------------

def _killed_mid_write(target: Path) -> Path:
    """A real process killed (SIGKILL) in the middle of an atomic write: its temp file stays."""
    code = ("import os, signal\nfrom advlab.utils.io import atomic_path\n"
            f"with atomic_path({str(target)!r}) as tmp:\n"
            "    tmp.write_bytes(b'half of an artifact' * 100)\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    before = set(stale_temp_files(target.parent))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (left,) = set(stale_temp_files(target.parent)) - before
    return left


def test_advlab_cache_lists_and_cleans_what_killed_runs_left(tmp_path, capsys):
    from filelock import FileLock

    from advlab.apps.cache import main

    root = tmp_path / "cache"
    stale = _killed_mid_write(root / "models" / "0123456789abcdef.pt")
    assert re.fullmatch(r"\.0123456789abcdef\.pt-\w{8}\.tmp", stale.name)
    busy = _killed_mid_write(root / "models" / "fedcba9876543210.pt")
    lock = FileLock(str(root / "models" / "fedcba9876543210.pt.lock"))
    lock.acquire()  # a live run building that artifact: its temp file must stay
    try:
        assert main(["--cache-dir", str(root), "list"]) == 0
        out = capsys.readouterr().out
        assert f"temp file {stale.name}: half-written by a killed run" in out
        assert f"temp file {busy.name}: being written (a run holds its lock)" in out
        assert main(["--cache-dir", str(root), "verify"]) == 0  # temp files are not artifacts
        out = capsys.readouterr().out
        assert f"TMP {stale}: half-written temp file of a killed run" in out and str(busy) not in out
        assert main(["--cache-dir", str(root), "clean"]) == 0 and stale.exists()  # without --yes: nothing goes
        assert main(["--cache-dir", str(root), "clean", "--yes"]) == 0
        assert "removed 1 stale temp file(s)" in capsys.readouterr().out
        assert not stale.exists() and busy.exists()
    finally:
        lock.release()
    assert main(["--cache-dir", str(root), "clear", "--yes"]) == 0
    assert not busy.exists() and stale_temp_files(root / "models") == []


# -- refused runs leave no run directory ------------------------------------------------------------

def _hydra_makes(run_dir: Path, work: bool = False) -> None:
    """What Hydra writes before a task starts (and, with `work`, a file of a run whose work began)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (run_dir / "train.log").write_text("refused\n")
    if work:
        (run_dir / "config_resolved.yaml").write_text("seed: 0\n")


@pytest.mark.parametrize("case", ["new", "existed", "work began"])
def test_a_refused_run_removes_exactly_the_directories_it_made(tmp_path, case):
    from advlab.runtime.hydra_app import _MadeDirs

    (tmp_path / "outputs" / "train").mkdir(parents=True)
    (tmp_path / "outputs" / "train" / "other").mkdir()  # another run's: never touched
    run_dir = tmp_path / "outputs" / "train" / "runs" / "2026-01-01" / "10-00-00"
    if case == "existed":
        run_dir.mkdir(parents=True)
        (run_dir / "mine.txt").write_text("the user's\n")
    _MadeDirs.arm()
    try:
        _hydra_makes(run_dir, work=case == "work began")
        (tmp_path / "elsewhere").mkdir()  # made later by the task: not the run directory
    finally:
        _MadeDirs.remove_stub()
    assert (tmp_path / "outputs" / "train" / "other").is_dir() and (tmp_path / "elsewhere").is_dir()
    if case == "new":
        assert not (tmp_path / "outputs" / "train" / "runs").exists()  # with the parents it made
    else:
        assert (run_dir / ".hydra").is_dir()
        assert case != "existed" or (run_dir / "mine.txt").read_text() == "the user's\n"


def test_a_run_refused_after_hydra_started_leaves_no_run_dir(tmp_path):
    """A missing data folder is found by the task (the pre-flight may run where the data is not):
    Hydra has made the default run directory (outputs/train/runs/<date>/<time>) by then."""
    proc = _app(tmp_path, "dataset=mnist", "logger=csv")
    line = _one_line(proc.stderr, "advlab-train", "dataset.data_dir")
    assert proc.returncode == 2 and "no MNIST files" in line
    assert not (tmp_path / "outputs").exists(), sorted(map(str, (tmp_path / "outputs").rglob("*")))


def test_a_refused_resume_keeps_the_existing_run_dir(tmp_path):
    run_dir = tmp_path / "existing"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("keep me\n")
    proc = _app(tmp_path, "dataset=mnist", "logger=csv", f"hydra.run.dir={run_dir}")
    _one_line(proc.stderr, "advlab-train", "dataset.data_dir")
    assert proc.returncode == 2 and (run_dir / "notes.txt").read_text() == "keep me\n"
