"""The hub in its production shape: TLS, the proxy on its own (from `hubstock units`), and restarts.

The proxy is started from the command line of the rendered ``hubstock-proxy.service``,
as an unprivileged user, with its secrets where systemd's ``LoadCredential=`` puts them.
The test makes its own CA and a certificate for 127.0.0.1; the client trusts only that
CA. A server runs as a real batch job (Slurm, and OpenPBS, whose rig keeps the hub, the
proxy and the client in its private network namespace); its kernel holds a variable; the
hub is stopped with SIGTERM and started again, and the same job serves the same kernel with
the variable intact, while the proxy keeps answering the user.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from rigs.clusters import Cluster, PBSCluster, SlurmCluster
from rigs.hub_rig import Hub, Polling, ensure_chp, execute, start_kernel
from rigs.hubsite import KERNEL_NAME, free_port, hub_settings, start_hub
from rigs.hubsite import test_cache as rigs_cache
from rigs.slurm_rig import create_user, remove_user
from tests.helpers import need_root

from hubstock.hub.units import KEY_CREDENTIAL, PROXY_UNIT, TOKEN_CREDENTIAL

pytestmark = pytest.mark.hub

USER = f"hslife{secrets.token_hex(2)}"
PASSWORD = "Restart-and-Stay-9"
PROXY_USER = "nobody"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca_and_cert(d: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for 127.0.0.1, made here."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=hubstock test CA", cwd=d)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "hub.key", "-out", "hub.csr",
             "-subj", "/CN=127.0.0.1", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "hub.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "hub.pem", "-days", "2", "-extfile", "san.ext", cwd=d)  # fmt: skip
    os.chmod(d / "hub.key", 0o600)
    os.chmod(d / "hub.pem", 0o644)
    return d / "ca.pem", d / "hub.pem", d / "hub.key"


def unit_exec_start(unit_text: str) -> list[str]:
    """The argv systemd would run for the unit's ExecStart= (its $$ and %% unescaped)."""
    (line,) = [ln for ln in unit_text.splitlines() if ln.startswith("ExecStart=")]
    argv = shlex.split(line.removeprefix("ExecStart="))
    return [a.replace("$$", "$").replace("%%", "%") for a in argv]


def unit_credentials(unit_text: str) -> dict[str, Path]:
    out = {}
    for ln in unit_text.splitlines():
        if ln.startswith("LoadCredential="):
            name, path = ln.removeprefix("LoadCredential=").split(":", 1)
            out[name] = Path(path)
    return out


class ProxyService:
    """configurable-http-proxy run as its unit says: the unit's user, its credentials folder
    (``launcher``: where it runs, e.g. inside a rig's network namespace)."""

    def __init__(self, unit_text: str, workdir: Path, log: Path, launcher=None) -> None:
        self.argv = unit_exec_start(unit_text)
        self.launcher = launcher
        self.creds = workdir / "credentials"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.creds.mkdir(parents=True, exist_ok=True)
        nobody = pwd.getpwnam(PROXY_USER)
        for name, src in unit_credentials(unit_text).items():  # what systemd does for LoadCredential=
            shutil.copyfile(src, self.creds / name)
            os.chown(self.creds / name, nobody.pw_uid, nobody.pw_gid)
            os.chmod(self.creds / name, 0o400)
        os.chown(self.creds, nobody.pw_uid, nobody.pw_gid)
        os.chmod(self.creds, 0o500)

    def start(self) -> ProxyService:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "CREDENTIALS_DIRECTORY": str(self.creds)}
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *self.argv]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.launcher(argv) if self.launcher else argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _get(url: str, ctx: ssl.SSLContext | None, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def _wait_answering(url: str, ctx: ssl.SSLContext, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _get(url, ctx, timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def user(hub_workdir):
    need_root("the hub lifecycle tests")
    homes = hub_workdir / "homes"
    homes.mkdir(mode=0o755, exist_ok=True)
    create_user(USER, PASSWORD, homes)
    yield USER
    remove_user(USER)


@pytest.fixture(params=["slurm", pytest.param("pbs", marks=pytest.mark.pbs)])
def cluster(request) -> Cluster:
    """The scheduler the server runs on (see tests/test_hub.py)."""
    if request.param == "pbs":
        c: Cluster = PBSCluster(request.getfixturevalue("openpbs_rig"))
    else:
        c = SlurmCluster(request.getfixturevalue("slurm_rig"))
    yield c
    c.close()


def test_tls_hub_with_its_own_proxy_survives_a_restart(hub_workdir, hub_site, channel, cluster, user):
    work = hub_workdir / f"lifecycle-{cluster.name}"
    work.mkdir(exist_ok=True)
    os.chmod(work, 0o755)
    ca, cert, key = make_ca_and_cert(work / "tls")
    # the proxy runs as an unprivileged user: give it a copy of the proxy it can read
    chp_dir = ensure_chp(rigs_cache()).parents[2]
    shutil.copytree(chp_dir, work / "chp", dirs_exist_ok=True, symlinks=True)
    chp = work / "chp" / "node_modules" / ".bin" / "configurable-http-proxy"
    ports = [free_port() for _ in range(3)]
    state = work / "state"
    (hub_site / "hubstock.toml").write_text(
        hub_settings(
            hub_workdir / "root",
            channel,
            state,
            ports=ports,
            **cluster.settings(),
            extra_hub=[
                "proxy_external = true",
                f'proxy_user = "{PROXY_USER}"',
                f'ssl_cert = "{cert}"',
                f'ssl_key = "{key}"',
            ],
        )
    )
    units = work / "units"
    argv = [sys.executable, "-m", "hubstock", "--site", str(hub_site), "units", "--out", str(units),
            "--proxy", str(chp), "--jupyterhub", shutil.which("jupyterhub") or sys.executable]  # fmt: skip
    subprocess.run(  # where the hub runs, with the scheduler's commands on PATH, as the admin does
        cluster.launcher(argv) if cluster.launcher else argv,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": cluster.hub_env().get("PATH", os.environ["PATH"])},
    )
    verify = subprocess.run(
        ["systemd-analyze", "verify", *map(str, sorted(units.glob("*.service")))],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    unit = (units / PROXY_UNIT).read_text()
    assert f"User={PROXY_USER}" in unit and "--ssl-key" in unit and "--ssl-cert" in unit
    assert set(unit_credentials(unit)) == {TOKEN_CREDENTIAL, KEY_CREDENTIAL}
    assert oct(os.stat(state / "proxy_auth_token").st_mode & 0o777) == "0o600"

    ctx = ssl.create_default_context(cafile=str(ca))  # trusts only the test's CA
    # the client runs where the hub does (the OpenPBS rig's namespace: 127.0.0.1 is its own)
    client = cluster.netns.call if cluster.netns else (lambda fn, *a, **kw: fn(*a, **kw))
    proxy = ProxyService(unit, work, work / "proxy.log", launcher=cluster.launcher).start()
    hub: Hub | None = None
    try:
        client(_wait_answering, f"https://127.0.0.1:{ports[0]}/", ctx)
        hub = start_hub(
            hub_site,
            ports[0],
            work / "hub.log",
            cluster.hub_env(),
            ssl_context=ctx,
            cleanup_servers=False,
            launcher=cluster.launcher,
            netns=cluster.netns,
        )
        assert hub.url.startswith("https://")

        # plain HTTP on the public port gets no page
        with pytest.raises((OSError, urllib.error.URLError)):
            client(_get, f"http://127.0.0.1:{ports[0]}/hub/login", None, timeout=5)
        # a client that does not trust the test CA is refused
        with pytest.raises(urllib.error.URLError):
            client(_get, f"https://127.0.0.1:{ports[0]}/hub/login", ssl.create_default_context(), timeout=5)

        status, token = hub.token_for(user, PASSWORD)
        assert status == 201 and token, hub.log_tail()
        status, body = hub.request("POST", f"/hub/api/users/{user}/server", token=token, body={})
        assert status in (201, 202), (status, body)
        hub.wait_for_server(user, token)
        (job,) = cluster.jobs(active_only=True)
        kid = start_kernel(hub, user, token, KERNEL_NAME)
        execute(hub, user, token, kid, "kept = 6 * 7")

        # a client asks the user's server for something every 0.2 s through the proxy, across the restart
        url = f"{hub.url}/user/{user}/api"
        polling = Polling(lambda: client(_get, url, ctx, timeout=5)[0]).start()
        hub.stop()  # SIGTERM: the hub goes, the job and the proxy stay
        print(f"\nthe hub stopped {hub.stopped_in:.1f} s after SIGTERM, with its stock page service")
        assert cluster.jobs(active_only=True) == [job]
        status, _ = client(_get, f"{hub.url}/user/{user}/api", ctx)
        assert status == 200, "the proxy stopped answering the user while the hub was down"

        hub.start()
        hub.wait_for_server(user, token)
        asked, failed = polling.stop()
        print(f"{asked} requests through the proxy across the hub's restart, {len(failed)} failed")
        assert asked >= 5 and failed == [], failed[:5]
        assert cluster.jobs(active_only=True) == [job]
        assert execute(hub, user, token, kid, "print(kept)").strip() == "42"

        status, _ = hub.request("DELETE", f"/hub/api/users/{user}/server", token=token)
        assert status in (202, 204)
        hub.wait_stopped(user, token)
        cluster.wait_no_jobs(timeout=60)
    finally:
        if hub:
            hub.stop()
        proxy.stop()
        cluster.cancel_all()
