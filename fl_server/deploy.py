"""A real Flower deployment on loopback: one SuperLink, N SuperNodes (one per tenant), one governed run.

``accute-fl run-local`` uses this; so do the tests with real processes. The processes are the same
ones a multi-machine deployment runs (README "Deployment"), on 127.0.0.1 only. By default they
run ``--insecure``; with ``secure=True`` (``run-local --secure``) they run the README's secured
recipe: TLS on the SuperLink (a throwaway CA from ``fl_server.credentials``), SuperNode
authentication (``--enable-supernode-auth``, each node's ECDSA key registered with
``flwr supernode register``), and ``flwr`` verifying the SuperLink against the CA:

- ``flower-superlink`` with the ACCUTE_ settings of the ServerApp in its environment (the ServerApp
  runs in a ``flwr-serverapp`` subprocess the SuperLink starts, and inherits them);
- one ``flower-supernode`` per tenant with its tenant's ``--node-config`` (from ``prepare_federation``)
  and its own ``state-dir`` (the node's own privacy ledger survives restarts);
- ``flwr run <project> <connection> --run-config …`` against a SuperLink connection written to
  ``$FLWR_HOME/config.toml`` inside the output folder (the user's ~/.flwr is never touched).

Every process starts in its own session and is stopped with its whole process tree (SuperLink and
SuperNode start detached ``flower-superexec`` children) on success, error and Ctrl-C. If
``run-local`` itself is killed (SIGKILL), its direct children get SIGTERM from the kernel
(``PR_SET_PDEATHSIG``), and every process it started carries a marker in its environment, written
to ``OUT/processes.json``: the next start in the same output folder kills whatever still carries
it (a detached ServerApp would otherwise go on and publish).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError

from fl_client import protocol
from fl_server.config import DpMode, RunConfig
from fl_server.connection import write_connection
from fl_server.credentials import NodeKey, TlsFiles, make_node_key, make_tls
from fl_server.report import build_report
from orchestrator.security import threat_intel
from privacy import ledger
from schema.config import Settings
from schema.db import make_engine, transaction
from schema.errors import AccuteError, ConflictError, DatabaseUnavailableError, InvalidInputError
from schema.migrate import require_current_schema, upgrade
from schema.models import FlRun
from simulations.federation import prepare_federation

log = logging.getLogger("accute.fl_server.deploy")

CONNECTION = "accute-local"
LOOPBACK = "127.0.0.1"


class DeploymentError(AccuteError):
    """A Flower process failed to start, the run failed, or it did not finish in time."""

    exit_code = 1


def project_root() -> Path:
    """The folder whose pyproject.toml carries ``[tool.flwr.app]`` (``flwr run`` builds the FAB there)."""
    root = Path(__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if not pyproject.exists() or "[tool.flwr.app]" not in pyproject.read_text():
        raise DeploymentError(
            f"no Flower app config at {pyproject}; run-local needs the source checkout (pip install -e .)"
        )
    return root


def fab_hash(app: Path) -> str:
    """The SHA-256 of the Flower App Bundle ``flwr run`` builds from ``app``: Flower's own builder
    (``build_fab_from_disk``, fixed zip timestamps), so it is the ``fab_hash`` the run gets."""
    import hashlib

    from flwr.cli.build import build_fab_from_disk

    return hashlib.sha256(build_fab_from_disk(app)).hexdigest()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def node_config_arg(node: Mapping[str, Any]) -> str:
    """A node config mapping as SuperNode's ``--node-config`` (space-separated TOML ``key=value``)."""
    parts = []
    for key, value in node.items():
        if isinstance(value, str) and any(c in value for c in '"\\\n'):
            raise InvalidInputError(f"node config value of '{key}' has quotes, backslashes or newlines")
        parts.append(f"{key}={json.dumps(value)}")
    return " ".join(parts)


def run_config_arg(values: Mapping[str, Any]) -> str:
    """Run config overrides as ``flwr run --run-config`` (dashed keys, TOML values)."""
    return " ".join(f"{key.replace('_', '-')}={json.dumps(value)}" for key, value in values.items())


# --- processes that die with run-local -------------------------------------------------------------

#: The environment variable that marks every process one ``run-local`` started (inherited by all
#: descendants, detached or not).
MARKER_ENV = "ACCUTE_RUN_LOCAL_ID"
PIDFILE = "processes.json"
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn``: the kernel sends the child SIGTERM when its parent dies (Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the pidfile is the fallback
        pass


def marked_processes(marker: str) -> list[int]:
    """Processes of this user whose environment carries ``MARKER_ENV=marker``."""
    needle = f"{MARKER_ENV}={marker}".encode()
    found: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def clean_stale_processes(out: Path) -> list[int]:
    """Kill what an earlier, killed ``run-local`` in ``out`` left running; returns their pids."""
    pidfile = out / PIDFILE
    try:
        marker = str(json.loads(pidfile.read_text())["marker"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
    stale = [p for p in marked_processes(marker) if _alive(p)]
    _signal_all(stale, signal.SIGKILL)
    if stale:
        log.warning("killed %d process(es) an earlier run-local left in %s", len(stale), out)
    pidfile.unlink(missing_ok=True)
    return stale


def _started(pid: int) -> str | None:
    """A process's start time (clock ticks after boot): tells the pidfile's owner from a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def running_owner(out: Path) -> int | None:
    """The pid of another ``run-local`` still running in ``out`` (its pidfile), or None. Its
    processes are not stale: killing them would wreck a live run."""
    try:
        owner = json.loads((out / PIDFILE).read_text())
        pid, started = int(owner["pid"]), owner.get("started")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid == os.getpid() or not _alive(pid) or started is None or _started(pid) != started:
        return None
    return pid


def driven_elsewhere(engine: Engine, run_name: str) -> str | None:
    """Why ``run_name`` cannot be resumed now (a live server holds its lease), before any process."""
    from sqlalchemy import inspect

    from fl_server.governance import lease_refusal

    if not inspect(engine).has_table(FlRun.__tablename__):
        return None
    with transaction(engine) as session:
        run = session.scalar(select(FlRun).where(FlRun.name == run_name))
        return None if run is None or run.status != "running" else lease_refusal(run)


# --- process trees --------------------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces and parentheses.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux /proc; just ``pid`` elsewhere)."""
    if not Path("/proc").is_dir():
        return [pid]
    children = _children_map()
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return not Path("/proc").is_dir()


def stop_tree(process: subprocess.Popen[bytes], grace_s: float = 8.0) -> None:
    """SIGTERM a process and its descendants, SIGKILL whatever is left after ``grace_s``."""
    pids = process_tree(process.pid)
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        process.poll()
        if not any(_alive(p) for p in pids):
            break
        time.sleep(0.1)
    # Children started after the first sweep (a ServerApp being launched) are caught here.
    leftovers = [p for p in {*pids, *process_tree(process.pid)} if _alive(p)]
    _signal_all(leftovers, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


@dataclass
class Managed:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    def running(self) -> bool:
        return self.process.poll() is None

    def tree(self) -> list[int]:
        return process_tree(self.process.pid)


# --- the deployment -------------------------------------------------------------------------------


@dataclass
class LocalDeployment:
    """SuperLink + one SuperNode per tenant on loopback, and the governed runs submitted to them."""

    out: Path
    task: str
    nodes: int
    seed: int = 0
    settings: Settings | None = None
    run_timeout_s: float = 1800.0
    processes: list[Managed] = field(default_factory=list)
    superlink_port: int = 0
    tenants: list[dict[str, Any]] = field(default_factory=list)
    secure: bool = False
    tls: TlsFiles | None = None
    node_keys: dict[str, NodeKey] = field(default_factory=dict)
    #: Marks every process this deployment starts (``MARKER_ENV``), recorded in ``OUT/processes.json``.
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise InvalidInputError("--nodes must be at least 1")
        RunConfig(run_name="check", task=self.task)  # an unknown task fails here, before any process
        self.out = self.out.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.logs = self.out / "logs"
        self.logs.mkdir(exist_ok=True)
        self.flwr_home = self.out / "flwr"
        if self.settings is None:
            self.settings = Settings(
                database_url=os.environ.get("ACCUTE_DATABASE_URL") or f"sqlite:///{self.out / 'accute.db'}",
                weights_dir=Path(os.environ.get("ACCUTE_WEIGHTS_DIR") or self.out / "weights").resolve(),
            )
        self.engine: Engine = make_engine(self.settings)
        self.bin_dir = Path(sys.executable).parent

    # -- setup

    @property
    def _settings(self) -> Settings:
        assert self.settings is not None
        return self.settings

    def prepare(self) -> None:
        """Migrate an output-folder SQLite database (others must be current), create the tenants."""
        url = self._settings.database_url
        if url.startswith("sqlite") and str(self.out) in url:
            upgrade(self.engine)
        else:
            require_current_schema(self.engine)
        manifest = self.out / "manifest.json"
        prepare_federation(
            self.engine, task=self.task, tenants=self.nodes, seed=self.seed, manifest_path=manifest
        )
        self.tenants = json.loads(manifest.read_text())["tenants"]
        for node in self.tenants:
            node[protocol.NODE_STATE_DIR] = str(self.out / "nodes" / str(node[protocol.NODE_TENANT]))

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["FLWR_HOME"] = str(self.flwr_home)
        env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
        env["ACCUTE_DATABASE_URL"] = self._settings.database_url
        env["ACCUTE_WEIGHTS_DIR"] = str(Path(self._settings.weights_dir).resolve())
        env.pop(protocol.RUN_MANIFEST, None)
        env.pop("ACCUTE_FL_MANIFEST", None)
        env[MARKER_ENV] = self.marker
        return env

    def _spawn(self, name: str, args: list[str]) -> Managed:
        log_path = self.logs / f"{name}.log"
        log_file = log_path.open("ab")
        process = subprocess.Popen(
            [str(self.bin_dir / args[0]), *args[1:]],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self._env(),
            cwd=self.out,
            start_new_session=True,  # Ctrl-C reaches us; we stop the trees in order
            preexec_fn=die_with_parent,  # a killed run-local takes its children along
        )
        managed = Managed(name, process, log_path, log_file)
        self.processes.append(managed)
        return managed

    def start_superlink(self, startup_timeout_s: float = 60.0, port: int | None = None) -> None:
        self.superlink_port = port or free_port()
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        security = ["--insecure"]
        if self.secure:
            self.tls = self.tls or make_tls(self.out / "credentials", LOOPBACK)
            security = [
                "--ssl-ca-certfile",
                str(self.tls.ca_cert),
                "--ssl-certfile",
                str(self.tls.server_cert),
                "--ssl-keyfile",
                str(self.tls.server_key),
                "--enable-supernode-auth",
            ]
        write_connection(
            CONNECTION,
            f"{LOOPBACK}:{self.superlink_port}",
            root_certificates=self.tls.ca_cert if self.tls else None,
            insecure=self.tls is None,
            make_default=True,
            home=self.flwr_home,
        )
        link = self._spawn(
            "superlink",
            [
                "flower-superlink",
                *security,
                "--disable-runtime-dependency-installation",
                "--host",
                LOOPBACK,
                "--port",
                str(self.superlink_port),
            ],
        )
        deadline = time.monotonic() + startup_timeout_s
        while time.monotonic() < deadline:
            if not link.running():
                raise DeploymentError(
                    f"flower-superlink exited with code {link.process.returncode}; see {link.log_path}"
                )
            if self.superlink_healthy():
                return
            time.sleep(0.3)
        raise DeploymentError(
            f"flower-superlink did not answer within {startup_timeout_s:g}s; see {link.log_path}"
        )

    def restart_superlink(self) -> None:
        """Flower again on the same port after the SuperLink died (a crash). Its in-memory state
        (the nodes' registrations) died with it and a SuperNode the new one refuses stops, so the
        nodes are restarted too (same state dirs), and what the dead SuperLink left behind (its
        SuperExec, a ServerApp) is killed. A run resumes when it is submitted again."""
        tenants = [str(node[protocol.NODE_TENANT]) for node in self.tenants]
        restart = [tenants.index(m.name) for m in self.processes if m.name in tenants]
        for managed in reversed(self.processes):
            if not managed.log_file.closed:
                self.stop_process(managed)
        orphans = [p for p in marked_processes(self.marker) if _alive(p)]
        _signal_all(orphans, signal.SIGKILL)
        if orphans:
            log.warning("killed %d process(es) the stopped SuperLink left behind", len(orphans))
        self.processes = []
        self.start_superlink(port=self.superlink_port)
        for index in restart:
            self.start_supernode(index)

    def superlink_healthy(self) -> bool:
        scheme = "https" if self.tls else "http"
        verify: Any = ssl.create_default_context(cafile=str(self.tls.ca_cert)) if self.tls else True
        try:
            url = f"{scheme}://{LOOPBACK}:{self.superlink_port}/health"
            return httpx.get(url, timeout=1.0, verify=verify).is_success
        except httpx.HTTPError:
            return False

    def register_node(self, name: str) -> NodeKey:
        """A node key pair, registered with the SuperLink (the operator's ``flwr supernode register``)."""
        key = make_node_key(self.out / "credentials" / "nodes", name)
        self._flwr("supernode", "register", str(key.public_key), CONNECTION)
        self.node_keys[name] = key
        return key

    def supernode_args(self, node_config: Mapping[str, Any], key: NodeKey | None) -> list[str]:
        security = ["--insecure"]
        if self.tls is not None:
            assert key is not None, "a secured SuperLink admits only nodes with a registered key"
            security = [
                "--root-certificates",
                str(self.tls.ca_cert),
                "--auth-supernode-private-key",
                str(key.private_key),
            ]
        return [
            "flower-supernode",
            *security,
            "--superlink",
            f"{LOOPBACK}:{self.superlink_port}",
            "--host",
            LOOPBACK,
            "--port",
            str(free_port()),
            "--node-config",
            node_config_arg(node_config),
        ]

    def start_supernode(self, index: int) -> Managed:
        node = self.tenants[index]
        name = str(node[protocol.NODE_TENANT])
        key = None
        if self.secure:
            key = self.node_keys.get(name) or self.register_node(name)
        return self._spawn(name, self.supernode_args(node, key))

    def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        owner = running_owner(self.out)
        if owner is not None:
            raise ConflictError(
                f"{self.out} is in use by another run-local (pid {owner}); stop it or pick another --out"
            )
        clean_stale_processes(self.out)
        owner_file = {"marker": self.marker, "pid": os.getpid(), "started": _started(os.getpid())}
        (self.out / PIDFILE).write_text(json.dumps(owner_file))
        self.prepare()
        self.start_superlink()
        for index in range(self.nodes):
            self.start_supernode(index)

    # -- runs

    def _flwr(self, *args: str, timeout_s: float = 120.0) -> str:
        result = subprocess.run(
            [str(self.bin_dir / "flwr"), *args],
            capture_output=True,
            env=self._env(),
            timeout=timeout_s,
            check=False,
            text=True,
        )
        if result.returncode != 0:
            detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
            raise DeploymentError(f"flwr {args[0]} failed: {detail[-1] if detail else result.returncode}")
        return result.stdout

    def check_fab(self) -> Path:
        """Refuse (``ThreatListedError``) the app's FAB when threat intelligence lists its hash;
        the app's folder otherwise."""
        root = project_root()
        threat_intel.refuse_listed_fab(self.engine, fab_hash(root), "submit")
        return root

    def submit(self, overrides: Mapping[str, Any]) -> str:
        """``flwr run`` with run config overrides; returns Flower's run id.

        The FAB is built first and its hash checked against threat intelligence: a listed bundle
        is refused (``ThreatListedError``) before the SuperLink sees it. (The ServerApp checks the
        hash Flower hands it again, for a ``flwr run`` started by hand.)
        """
        root = self.check_fab()
        out = self._flwr(
            "run",
            str(root),
            CONNECTION,
            "--format",
            "json",
            "--run-config",
            run_config_arg(overrides),
        )
        payload = json.loads(out[out.index("{") :])
        if not payload.get("success"):
            raise DeploymentError(f"flwr run did not start the run: {payload}")
        return str(payload["run-id"])

    def flower_status(self, run_id: str) -> str:
        out = self._flwr("ls", CONNECTION, "--run-id", run_id, "--format", "json", timeout_s=60)
        runs = json.loads(out[out.index("{") :]).get("runs", [])
        return str(runs[0]["status"]) if runs else "unknown"

    def db_run(self, run_name: str) -> tuple[str, int] | None:
        with transaction(self.engine) as session:
            run = session.scalar(select(FlRun).where(FlRun.name == run_name))
            return None if run is None else (run.status, run.last_completed_round)

    def wait(
        self,
        run_id: str,
        run_name: str | None = None,
        timeout_s: float | None = None,
        flower_poll_s: float = 15.0,
    ) -> str:
        """Wait until Flower reports the run finished; returns its final status (``finished:…``).

        Each ``flwr ls`` is a new Python process, so Flower is asked every ``flower_poll_s`` only
        (a crashed ServerApp shows there); the database is read every second, and once it says the
        run completed, Flower is asked every second until the model is published.
        """
        limit = timeout_s or self.run_timeout_s
        deadline = time.monotonic() + limit
        next_flower = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            link = self.processes[0]
            if not link.running():
                raise DeploymentError(
                    f"flower-superlink stopped (code {link.process.returncode}); see {link.log_path}"
                )
            try:
                state = self.db_run(run_name) if run_name else None
            except (DatabaseUnavailableError, DBAPIError) as exc:
                # A database restart is the ServerApp's to ride out (it retries); keep waiting.
                log.warning("database unavailable while waiting for the run (%s); still waiting", exc)
                state = None
            if (state is not None and state[0] == "completed") or time.monotonic() >= next_flower:
                status = self.flower_status(run_id)
                if status.startswith("finished"):
                    self.save_serverapp_log(run_id)
                    return status
                next_flower = time.monotonic() + flower_poll_s
            time.sleep(1.0)
        raise DeploymentError(f"run {run_id} did not finish within {limit:g}s")

    def save_serverapp_log(self, run_id: str) -> Path:
        """The ServerApp's own log (kept by the SuperLink) as ``logs/serverapp-<run id>.log``."""
        path = self.logs / f"serverapp-{run_id}.log"
        try:
            path.write_text(self._flwr("log", run_id, CONNECTION, "--show", timeout_s=60))
        except (DeploymentError, subprocess.TimeoutExpired) as exc:
            path.write_text(f"could not fetch the ServerApp log: {exc}\n")
        return path

    def report(self, run_name: str) -> Path:
        policy = ledger.LedgerPolicy.from_settings(self._settings)
        report = build_report(self.engine, run_name, Path(self._settings.weights_dir), policy)
        path = self.out / "report.json"
        path.write_text(json.dumps(report, indent=2, default=str))
        return path

    def partial_report(self, run_name: str) -> Path | None:
        """report.json for a run that failed (the rounds it committed, every outcome and charge so
        far), or None when there is nothing to report (no such run, an unreachable database)."""
        try:
            return self.report(run_name)
        except Exception as exc:  # the failure being reported matters more than this one
            log.warning("no partial report for run %s: %s", run_name, exc)
            return None

    # -- teardown

    def stop_process(self, managed: Managed) -> None:
        stop_tree(managed.process)
        managed.log_file.close()

    def stop(self) -> None:
        # Nodes first (they would otherwise retry against a gone SuperLink), the SuperLink last.
        for managed in reversed(self.processes):
            if not managed.log_file.closed:
                self.stop_process(managed)
        if self.processes:
            clean_stale_processes(self.out)  # anything that escaped its tree; removes the pidfile
        self.engine.dispose()

    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION = re.compile(r"\b([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Timeout))(?::\s*(.*))?$")


def last_exception_line(log_text: str) -> str | None:
    """The last ``SomeError: message`` line of a ServerApp log (its final traceback's cause), for
    the one-line CLI error; None when the log shows no exception."""
    for raw in reversed(log_text.splitlines()):
        line = _ANSI.sub("", raw).strip()
        match = _EXCEPTION.search(line)
        if match is None or line.startswith(("File ", "Traceback")):
            continue
        name, message = match.group(1), (match.group(2) or "").strip()
        return f"{name}: {message}"[:300] if message else name
    return None


def refusal_from_cause(cause: str | None) -> AccuteError | None:
    """The typed error a ServerApp's last exception line stands for, when it was a refusal.

    Flower logs the exception qualified (``schema.errors.ConflictError: …``), so the class name is
    matched, not the prefix: ``ConflictError`` (another server took the run, a race the pre-check
    cannot close) and ``ThreatListedError`` (the bundle was listed after our own check).
    """
    error_path, _, message = (cause or "").partition(": ")
    error_class = error_path.rsplit(".", 1)[-1]
    if error_class == ConflictError.__name__:
        return ConflictError(message)
    if error_class == threat_intel.ThreatListedError.__name__:
        return threat_intel.ThreatListedError(message)
    return None


def run_overrides(
    run_name: str, task: str, rounds: int, dp: DpMode, seed: int, nodes: int, **extra: Any
) -> dict[str, Any]:
    """The run config for ``flwr run``, validated here so a bad value fails before any process."""
    values: dict[str, Any] = {
        "run_name": run_name,
        "task": task,
        "rounds": rounds,
        "dp": dp.value,
        "seed": seed,
        "min_nodes": nodes,
        **extra,
    }
    RunConfig.parse(values)
    return values


def run_local(
    out: Path,
    *,
    task: str,
    nodes: int,
    rounds: int,
    dp: DpMode = DpMode.LOCAL,
    seed: int = 0,
    run_name: str | None = None,
    timeout_s: float = 1800.0,
    extra: Mapping[str, Any] | None = None,
    secure: bool = False,
) -> Path:
    """Start the deployment, run one governed run to the end, stop everything, write report.json."""
    name = run_name or f"local-{task}-{nodes}n-{rounds}r-s{seed}"
    overrides = run_overrides(name, task, rounds, dp, seed, nodes, **dict(extra or {}))
    with LocalDeployment(out, task, nodes, seed, run_timeout_s=timeout_s, secure=secure) as deployment:
        refusal = driven_elsewhere(deployment.engine, name)
        if refusal is not None:  # before any process starts
            raise ConflictError(refusal)
        deployment.check_fab()  # a listed bundle starts no process (submit checks it again)
        deployment.start()
        run_id = deployment.submit(overrides)
        status = deployment.wait(run_id, name)
        if status != "finished:completed":
            log_path = deployment.logs / f"serverapp-{run_id}.log"
            cause = last_exception_line(log_path.read_text(errors="replace")) if log_path.exists() else None
            refusal_error = refusal_from_cause(cause)
            if refusal_error is not None:
                raise refusal_error
            partial = deployment.partial_report(name)
            raise DeploymentError(
                f"run '{name}' ended {status}"
                + (f" ({cause})" if cause else "")
                + (f"; partial report {partial}" if partial else "")
                + f"; see {log_path} (run again with the same --run-name to resume)"
            )
        return deployment.report(name)
