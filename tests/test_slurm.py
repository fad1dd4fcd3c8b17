"""cluster/slurm.sbatch on a real one-node SLURM (Debian's slurm-wlm and munge, installed by .ci/run): munged,
slurmctld and slurmd started here in a temp folder, the shipped script submitted with sbatch on a tiny sweep."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY_DLN, TINY_VGG, tiny_spec, write_spec
from needs import unavailable
from test_sweep import assert_complete

from bnsweep.specfile import load_cells

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.slurm]
BINARIES = ("munged", "mungekey", "munge", "slurmctld", "slurmd", "sinfo", "sbatch", "scontrol", "scancel",
            "unshare", "pgrep")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def tail(path: Path, n: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else f"({path} missing)"


class Slurm:
    """A one-node SLURM cluster of this machine, private to one test module; stops every daemon it started."""

    def __init__(self, root: Path):
        self.root, self.procs = root, []
        self.host = socket.gethostname().split(".")[0]
        self.env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}

    def start(self) -> None:
        r = self.root
        for d in ("state", "spool", "log"):
            (r / d).mkdir(mode=0o700)
        sock = r / "munge.sock"
        subprocess.run(["mungekey", "--create", f"--keyfile={r / 'munge.key'}"], check=True, capture_output=True)
        self._spawn(["munged", "--foreground", "--force", f"--key-file={r / 'munge.key'}", f"--socket={sock}",
                     f"--pid-file={r / 'munged.pid'}", f"--log-file={r / 'log/munged.log'}",
                     f"--seed-file={r / 'munged.seed'}"], r / "log/munged.out")
        if not self._wait(lambda: subprocess.run(f"munge -n -S {sock} | unmunge -S {sock}", shell=True,
                                                 capture_output=True).returncode == 0, 30):
            self.stop()
            unavailable(f"munged did not start: {tail(r / 'log/munged.log', 5)} {tail(r / 'log/munged.out', 5)}")
        ctld_port, slurmd_port = free_ports(2)
        (r / "slurm.conf").write_text(f"""\
ClusterName=bnsweeptest
SlurmctldHost={self.host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'log/slurmctld.log'}
SlurmdLogFile={r / 'log/slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
MinJobAge=3600
NodeName={self.host} CPUs={os.cpu_count()} RealMemory=1000 State=UNKNOWN
PartitionName=test Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")
        self._spawn(["slurmctld", "-D", "-i"], r / "log/slurmctld.out")
        # slurmd in its own PID namespace: a job's `ray stop` (symmetric-run ends with one) sees, and stops, only
        # the Ray processes of this cluster, not those of anyone else on this machine; as on a node of one's own.
        self._spawn(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM", "slurmd", "-D"],
                    r / "log/slurmd.out")
        if not self._wait(lambda: self.sinfo() == "idle", 120):
            state = self.sinfo()
            self.stop()
            raise AssertionError(f"the SLURM node is '{state}', not idle, after 120 s:\n"
                                 f"{tail(r / 'log/slurmctld.log')}\n{tail(r / 'log/slurmd.log')}")

    def sinfo(self) -> str:
        p = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True)
        return p.stdout.strip()

    def job(self, job_id: str) -> dict:
        out = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=self.env, capture_output=True,
                             text=True).stdout
        return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)

    def _spawn(self, cmd: list[str], log: Path) -> None:
        with open(log, "wb") as f:
            self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=f, stderr=subprocess.STDOUT,
                                               start_new_session=True))

    @staticmethod
    def _wait(ready, timeout_s: float) -> bool:
        deadline = time.time() + timeout_s  # how long to wait for a daemon, not a speed test
        while time.time() < deadline:
            if ready():
                return True
            time.sleep(0.5)
        return False

    def stop(self) -> None:
        for p in reversed(self.procs):  # slurmd (and its namespace), slurmctld, munged: each by its own pid
            if p.poll() is None:
                # unshare ignores SIGTERM while it waits: stop slurmd, its child; when slurmd, the namespace's
                # first process, ends, the kernel ends every process left in the namespace (a job's Ray)
                children = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
                for pid in children if p.args[0] == "unshare" else [p.pid]:
                    os.kill(int(pid), signal.SIGTERM)
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if os.geteuid() != 0:
        unavailable("a private SLURM needs root (slurmd runs jobs as their user)")
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        unavailable(f"SLURM or munge not installed (missing {', '.join(missing)}): "
                    ".ci/run installs slurm-wlm and munge")
    if subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True).returncode != 0:
        unavailable("cannot create a PID namespace for slurmd (it keeps the job's `ray stop` away from other Ray "
                    "processes on this machine)")
    cluster = Slurm(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    yield cluster
    cluster.stop()


def test_the_sbatch_script_runs_a_sweep_on_slurm(slurm, tmp_path):
    grids = [{**TINY_DLN, "lr": [1.0e-4]},  # 4 cells
             {**TINY_VGG, "seed": [0]}]     # 2 cells on real digits
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(tmp_path / "out", grids=grids, name="slurm"))
    home = tmp_path / "home"
    home.mkdir()
    ports = free_ports(7)  # Ray's fixed default ports may be taken by other Ray instances on this machine
    start_args = ("--include-dashboard=false --dashboard-agent-listen-port={} "
                  "--dashboard-agent-grpc-port={} --metrics-export-port={} --runtime-env-agent-port={} "
                  "--node-manager-port={} --object-manager-port={}").format(*ports[1:])
    env = {k: v for k, v in slurm.env.items() if not k.startswith("RAY_")}  # the script's own defaults: token auth
    env.update(HOME=str(home), BNSWEEP_PYTHON=sys.executable, PYTHONPATH=str(ROOT), RAY_PORT=str(ports[0]),
               RAY_START_ARGS=start_args)
    p = subprocess.run(["sbatch", "--parsable", f"--output={tmp_path / 'job.out'}", str(ROOT / "cluster/slurm.sbatch"),
                        str(spec), "--max-concurrent", "2"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    job_id = p.stdout.strip().split(";")[0]
    deadline = time.time() + 900  # a bound on a hang, not a speed test
    while (state := slurm.job(job_id).get("JobState")) in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
        if time.time() > deadline:
            subprocess.run(["scancel", job_id], env=slurm.env)
            pytest.fail(f"SLURM job {job_id} still {state} after 900 s:\n{tail(tmp_path / 'job.out')}")
        time.sleep(1)
    log = (tmp_path / "job.out").read_text()
    assert state == "COMPLETED" and slurm.job(job_id)["ExitCode"] == "0:0", f"job {job_id} {state}:\n{log[-4000:]}"
    assert "On head node. Starting Ray cluster head" in log  # symmetric-run started Ray, then ran the driver
    assert "6 cells: 0 already have results, 6 to run" in log
    _, cells = load_cells(spec)
    done, steps, evals = assert_complete(tmp_path / "out", cells)
    assert set(done["status"]) == {"done"}
    assert set(done["hostname"]) == {socket.gethostname()}
    assert dict(done.select("cell_id", "steps_done").iter_rows()) == {c.cell_id: c.train.steps for c in cells}
    assert len(steps) > 0 and len(evals) > 0
    assert (home / ".ray/auth_token").stat().st_mode & 0o077 == 0  # token auth, with a private token


def test_a_ray_that_cannot_start_fails_the_job(slurm, tmp_path):
    """symmetric-run itself exits 0 when `ray start` fails; the script must not report such a job as done."""
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(tmp_path / "out", grids=[{**TINY_DLN, "lr": [1.0e-4]}]))
    env = {**{k: v for k, v in slurm.env.items() if not k.startswith("RAY_")}, "HOME": str(tmp_path),
           "BNSWEEP_PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "RAY_START_ARGS": "--no-such-option"}
    p = subprocess.run(["sbatch", "--parsable", f"--output={tmp_path / 'job.out'}", str(ROOT / "cluster/slurm.sbatch"),
                        str(spec)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    job_id = p.stdout.strip().split(";")[0]
    deadline = time.time() + 300  # a bound on a hang, not a speed test
    while (job := slurm.job(job_id)).get("JobState") in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
        assert time.time() < deadline, f"SLURM job {job_id} still running after 300 s:\n{tail(tmp_path / 'job.out')}"
        time.sleep(1)
    log = (tmp_path / "job.out").read_text()
    assert (job["JobState"], job["ExitCode"]) == ("FAILED", "1:0"), log[-3000:]
    assert "No such option '--no-such-option'" in log and "error: Ray did not start on the allocation" in log
    assert not (tmp_path / "out").exists()
