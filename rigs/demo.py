"""`nox -s demo`: the whole hub on 127.0.0.1, built offline, in one command.

Run from the repository root (``nox -s demo`` does this)::

    python -m rigs.demo [--dir DIR] [--port 8000] [--user demo] [--scheduler slurm|pbs] [--check]

It builds the offline test channel (once, in the tests' cache), writes a demo site
(a server env and a stock Python kernel env) into ``DIR/site``, locks, builds and
publishes it into ``DIR/root``, then starts JupyterHub on 127.0.0.1 with that
site's own ``spawner/jupyterhub_config.py``:

- as root: a private single-node Slurm (``DIR/slurm``) runs the servers as batch
  jobs of a PAM user (``demo``, home under ``DIR/homes``, password generated once
  and kept in ``DIR/demo-password``, mode 0600), and the proxy runs on its own, as the
  rendered ``hubstock-proxy.service`` runs it (``[hub] proxy_external = true``, the default):
  ``--check`` restarts the hub while it asks the user's server for something every 0.2 s
  through the proxy, and no request fails;
- as root with ``--scheduler pbs``: a private single-node OpenPBS (PBS Pro, ``DIR/openpbs``,
  built once from ``HUBSTOCK_OPENPBS_SOURCE``) runs them instead. That rig lives in its own
  network namespace, and so do the hub and its proxy; the demo relays the printed address
  (127.0.0.1 of this machine) to the hub there;
- otherwise: servers run as this user on this machine (the ``simple`` scheduler),
  login with any name and the password the hub keeps in ``DIR/state/demo_password``.

It prints the address and the credentials and runs until Ctrl-C (or SIGTERM), then
stops the servers, the hub, the proxy and the Slurm rig, by PID. Its parent's end is a SIGTERM
too (``prctl(PR_SET_PDEATHSIG)``): SIGTERM sent to the ``nox`` process alone, which ends nox at
once, still stops everything.
A second run reuses the builds: the locks are fresh, the builds up to date and the
generation unchanged, so it only starts things. ``--check`` brings everything up,
logs in with the printed credentials, starts a server, checks that it lists
exactly the published stock kernels, stops everything and exits 0 (or 1).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import pwd
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from hubstock.errors import HubstockError
from hubstock.hub.config import ensure_secret_file, ensure_state_dir
from hubstock.hub.units import TOKEN_CREDENTIAL, Executables, proxy_command
from hubstock.site import load_site
from hubstock.store.generations import resolve_current
from hubstock.store.root import Root

from .channel import cached_channel
from .clusters import PBSCluster
from .hub_rig import Forwarder, Hub, HubError, Polling, ensure_chp
from .hubsite import base_settings, build_site, free_port, hub_settings, start_hub, test_cache
from .openpbs import OpenPBSRig
from .slurm_rig import (
    RigError,
    SlurmRig,
    _alive,
    _descendants,
    _proc_stat,
    _terminate,
    create_user,
    require_binaries,
)

USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,30}$")


class DemoError(Exception):
    """The demo cannot go on; the message says why and what to do."""


def say(msg: str) -> None:
    print(f"hubstock demo: {msg}", flush=True)


def box(lines: list[str]) -> None:
    width = max(len(line) for line in lines)
    print("", "+" + "-" * (width + 4) + "+", *(f"|  {line.ljust(width)}  |" for line in lines), sep="\n")
    print("+" + "-" * (width + 4) + "+", "", sep="\n", flush=True)


def default_dir() -> Path:
    return Path(os.environ.get("HUBSTOCK_DEMO_DIR") or f"/var/tmp/hubstock-demo-{os.getuid()}")


def own_dir(path: Path) -> Path:
    """``path``, created if missing, mode 0755: refused if it is a link or someone else's
    (it may sit in a world-writable /var/tmp, and the hub runs what is in it)."""
    path = Path(os.path.abspath(path))
    path.mkdir(parents=True, exist_ok=True)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise DemoError(f"{path} is not a directory of yours; remove it or pass --dir elsewhere.")
    path.chmod(0o755)
    path = path.resolve()
    if os.geteuid() == 0:  # the job's user reads the builds and its home under it
        for p in path.parents:
            if not p.stat().st_mode & stat.S_IXOTH:
                raise DemoError(
                    f"{p} is mode {stat.S_IMODE(p.stat().st_mode):o}: the demo user cannot reach "
                    f"{path}; pass a --dir whose parents everyone can enter (o+x), e.g. under /var/tmp."
                )
    return path


class Demo:
    """Everything one run starts, so that it stops exactly that."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = own_dir(args.dir)
        self.site, self.root, self.state = self.dir / "site", self.dir / "root", self.dir / "state"
        self.as_root = os.geteuid() == 0
        self.user: str = args.user
        self.password = ""
        self.scheduler: str = args.scheduler
        self.rig: SlurmRig | OpenPBSRig | None = None
        self.cluster: PBSCluster | None = None
        self.forwarder: Forwarder | None = None
        self.hub: Hub | None = None
        self.proxy: subprocess.Popen[bytes] | None = None
        self.channel: Path | None = None
        self.url = ""

    # -- bring up ------------------------------------------------------------------------

    def build(self) -> tuple[str, list[str]]:
        """The channel and the published site: (generation, kernel names)."""
        os.environ.setdefault("UV_CACHE_DIR", str(test_cache() / "uv"))  # PyPI files, shared with the tests
        t0 = time.monotonic()
        say("the offline conda channel (built once, then reused)...")
        channel = cached_channel()
        say(f"channel ready in {time.monotonic() - t0:.0f} s: {channel}")
        t0 = time.monotonic()
        say(f"locking, building and publishing the demo site in {self.site}")
        say("  (a server env and a Python kernel env; the first time takes a few minutes)...")
        self.site.mkdir(exist_ok=True)
        (self.site / "hubstock.toml").write_text(base_settings(self.root, channel))
        build_site(self.site, self.root, channel, report=lambda line: say(f"  {line}"))
        current = resolve_current(Root(self.root))
        assert current is not None, "build_site publishes a generation"
        manifest = current.manifest()
        kernels = [k.name for k in manifest.kernels]
        say(
            f"published generation {manifest.generation} (kernels: {', '.join(kernels)}) "
            f"in {time.monotonic() - t0:.0f} s"
        )
        self.channel = channel
        return manifest.generation, kernels

    def start(self) -> None:
        slurm_conf = None
        if self.as_root and self.scheduler == "pbs":
            self.rig = OpenPBSRig(self.dir / "openpbs")
            say(
                "starting a private single-node OpenPBS in its own network namespace (the first run builds it)..."
            )
            self.rig.start()
            self.cluster = PBSCluster(self.rig)
            say(f"OpenPBS up ({self.rig.start_kind} start) in {self.rig.timings['start']:.0f} s")
        elif self.as_root:
            self.rig = SlurmRig(self.dir / "slurm")
            say("starting a private single-node Slurm (munged, slurmctld, slurmd)...")
            self.rig.start()
            slurm_conf = self.rig.slurm_conf
        if self.as_root:
            self.password = ensure_secret_file(self.dir / "demo-password", 9)
            create_user(self.user, self.password, self.dir / "homes")
            say(f"PAM user {self.user} ready (home {self.dir / 'homes' / self.user})")
        port = free_port(self.args.port)
        if port != self.args.port:
            say(f"port {self.args.port} is busy; using {port} instead")
        ports = [port]
        while len(ports) < 3:  # the hub's API and the proxy's API: any other free ports
            if (p := free_port()) not in ports:
                ports.append(p)
        say("starting JupyterHub and its proxy (the first run installs configurable-http-proxy with npm)...")
        if self.cluster:  # the hub, its proxy and its API inside the OpenPBS rig's namespace
            settings = self.cluster.settings()
            hub_env: dict[str, str] | None = self.cluster.hub_env()
        else:
            settings = {"scheduler": "slurm" if self.as_root else "simple", "slurm_conf": slurm_conf}
            hub_env = self.rig.env if isinstance(self.rig, SlurmRig) else None
        # with Slurm, the proxy runs on its own as its unit does; in the OpenPBS rig's namespace and
        # without root, the hub starts its own (which stops with it)
        own_proxy = self.as_root and not self.cluster
        (self.site / "hubstock.toml").write_text(
            hub_settings(
                self.root,
                self.channel,
                self.state,
                ports=ports,
                authenticator="pam" if self.as_root else "shared-password",
                extra_hub=["proxy_external = true"] if own_proxy else None,
                **settings,
            )
        )
        if own_proxy:
            self.start_proxy(ports[2])
        self.hub = start_hub(
            self.site,
            port,
            self.dir / "hub.log",
            hub_env,
            start=False,
            cleanup_servers=not own_proxy,  # with its own proxy, the hub restarts without its servers
            launcher=self.cluster.launcher if self.cluster else None,
            netns=self.cluster.netns if self.cluster else None,
        )
        self.hub.start(timeout=120)
        if self.cluster and self.cluster.netns:  # this machine's 127.0.0.1:port -> the hub's, in the rig
            self.forwarder = Forwarder(self.cluster.netns, "127.0.0.1", port, port)
        self.url = self.hub.url + "/"
        if not self.as_root:
            self.password = (self.state / "demo_password").read_text().strip()

    def start_proxy(self, api_port: int) -> None:
        """configurable-http-proxy on its own, with the command line ``hubstock units`` renders for
        ``hubstock-proxy.service`` (its token from a credentials folder, as systemd gives it)."""
        site = load_site(self.site)
        state = ensure_state_dir(site)
        creds = self.dir / "proxy-credentials"
        creds.mkdir(mode=0o700, exist_ok=True)
        token = creds / TOKEN_CREDENTIAL
        token.write_text(ensure_secret_file(state / "proxy_auth_token") + "\n")
        token.chmod(0o600)
        exe = Executables(jupyterhub=sys.executable, proxy=str(ensure_chp(test_cache())))
        with open(self.dir / "proxy.log", "ab") as log:
            self.proxy = subprocess.Popen(
                ["sh", "-c", proxy_command(site, exe, credentials=str(creds))],
                cwd=self.dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (self.dir / "proxy.pid").write_text(f"{self.proxy.pid}\n")
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", api_port), timeout=1).close()
                break
            except OSError:
                if self.proxy.poll() is not None or time.monotonic() > deadline:
                    raise DemoError(f"the proxy did not start; see {self.dir / 'proxy.log'}") from None
                time.sleep(0.1)
        say(f"the proxy runs on its own (pid {self.proxy.pid}), as hubstock-proxy.service would run it")

    def stop_leftovers(self) -> None:
        """What an earlier run on this directory left running because it was killed: stop it by PID."""
        try:
            pid = int((self.state / "jupyterhub.pid").read_text().split()[0])
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except (OSError, ValueError, IndexError):
            pass
        else:
            st = _proc_stat(pid)
            if st and Path(cwd) == self.site:
                say(f"stopping the hub an earlier run left running (pid {pid})")
                _terminate([(pid, st[2])], timeout=90)
        try:
            pid = int((self.dir / "proxy.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
        else:
            st = _proc_stat(pid)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() if st else b""
            if st and str(self.dir).encode() in cmdline:
                say(f"stopping the proxy an earlier run left running (pid {pid})")
                _terminate([(pid, st[2])], timeout=30)
        if self.as_root and (rig := SlurmRig(self.dir / "slurm")).running():
            say("stopping the Slurm rig an earlier run left running")
            rig.stop()
        if (
            self.as_root
            and (self.dir / "openpbs").exists()
            and (pbs := OpenPBSRig(self.dir / "openpbs")).running()
        ):
            say("stopping the OpenPBS rig an earlier run left running")
            pbs.stop()

    def show(self, generation: str, kernels: list[str]) -> None:
        if self.as_root and self.scheduler == "pbs":
            how = (
                f"servers run as OpenPBS jobs of user {self.user} (private OpenPBS in {self.dir / 'openpbs'})"
            )
        elif self.as_root:
            how = f"servers run as Slurm jobs of user {self.user} (private Slurm in {self.dir / 'slurm'})"
        else:
            how = "servers run as you on this machine (not root: no Slurm, no PAM)"
        box(
            [
                f"Open {self.url}   user: {self.user}   password: {self.password}",
                f"Stock kernels: {', '.join(kernels)} (generation {generation})",
                how,
                f"Hub log: {self.dir / 'hub.log'}",
                "Checking..." if self.args.check else "Press Ctrl-C to stop.",
            ]
        )

    # -- check -----------------------------------------------------------------------------

    def check(self, kernels: list[str]) -> None:
        """What a user does: the login page, log in, a server, its kernels, stop it."""
        hub, user = self.hub, self.user
        assert hub is not None
        status, _ = hub.request("GET", "/hub/login")
        if status != 200:
            raise DemoError(f"the login page answered {status}, not 200")
        say("check: the login page answers (200)")
        if self.forwarder:  # what a browser on this machine gets, relayed into the rig's namespace
            import urllib.request

            with urllib.request.urlopen(f"http://127.0.0.1:{self.forwarder.port}/hub/login", timeout=30) as r:
                if r.status != 200:
                    raise DemoError(f"the login page answered {r.status} through the relay, not 200")
            say("check: the login page answers on this machine's 127.0.0.1 too (relayed to the hub)")
        status, token = hub.token_for(user, self.password)
        if status != 201 or not token:
            raise DemoError(f"logging in as {user} with the printed password failed ({status})")
        say(f"check: logged in as {user} with the printed password")
        status, body = hub.request("POST", f"/hub/api/users/{user}/server", token=token, body={})
        if status not in (201, 202):
            raise DemoError(f"starting the server failed ({status}): {body}")
        hub.wait_for_server(user, token, timeout=300)
        status, page = hub.request("GET", f"/user/{user}/lab", token=token)
        if status != 200 or "JupyterLab" not in str(page):
            raise DemoError(f"/user/{user}/lab answered {status}, not JupyterLab")
        say(f"check: the server is up and /user/{user}/lab is JupyterLab")
        status, specs = hub.request("GET", f"/user/{user}/api/kernelspecs", token=token)
        listed = sorted((specs or {}).get("kernelspecs", {})) if status == 200 else []
        if listed != sorted(kernels) or "python3" in listed:
            raise DemoError(f"the server lists kernels {listed} ({status}), not the published {kernels}")
        say(f"check: the server lists exactly the published kernels: {', '.join(listed)}")
        if self.proxy:
            self.check_restart(user, token)
        status, _ = hub.request("DELETE", f"/hub/api/users/{user}/server", token=token)
        if status not in (202, 204):
            raise DemoError(f"stopping the server failed ({status})")
        hub.wait_stopped(user, token)
        if self.cluster:
            self.cluster.wait_no_jobs(timeout=60)
        elif isinstance(self.rig, SlurmRig):
            self.rig.wait_no_jobs(timeout=60, active_only=True)
        say("check: the server stopped; all good")

    def check_restart(self, user: str, token: str) -> None:
        """The hub restarts while a client asks the user's server for something every 0.2 s
        through the proxy: no request may fail."""
        hub = self.hub
        assert hub is not None
        polling = Polling(lambda: hub.request("GET", f"/user/{user}/api", timeout=5)[0]).start()
        t0 = time.monotonic()
        try:
            hub.stop()
            hub.start(timeout=120)
            hub.wait_for_server(user, token, timeout=120)
        finally:
            asked, failed = polling.stop()
        if failed:
            raise DemoError(f"{len(failed)} of {asked} requests failed while the hub restarted: {failed[:5]}")
        say(
            f"check: the hub restarted in {time.monotonic() - t0:.1f} s; the server answered all "
            f"{asked} requests through the proxy meanwhile"
        )

    # -- stop ------------------------------------------------------------------------------

    def stop_server(self) -> None:
        """The demo user's server, if it runs (best effort: the rig cancels a job that is left)."""
        hub = self.hub
        if hub is None or not self.password:
            return
        try:
            status, token = hub.token_for(self.user, self.password)
            if status != 201 or not token:
                return
            status, model = hub.request("GET", f"/hub/api/users/{self.user}", token=token)
            if status == 200 and isinstance(model, dict) and model.get("servers"):
                say(f"stopping {self.user}'s server...")
                hub.request("DELETE", f"/hub/api/users/{self.user}/server", token=token)
                hub.wait_stopped(self.user, token, timeout=60)
        except (HubError, OSError, AssertionError) as e:
            say(f"could not stop {self.user}'s server through the hub ({e}); the rig cancels its job")

    def stop(self) -> bool:
        """Stop the hub (it stops its servers and proxy), then the rig; True if nothing is left."""
        stopped, clean = [], True
        if self.hub and self.hub.proc and self.hub.proc.poll() is None:
            pid = self.hub.proc.pid
            kids = [(p, st[2]) for p in _descendants(pid) if (st := _proc_stat(p))]
            if self.proxy:  # the hub keeps its servers across restarts: stop the user's first
                self.stop_server()
            say("stopping the hub" + ("..." if self.proxy else " (its servers and the proxy with it)..."))
            self.hub.stop()
            if left := [(p, s) for p, s in kids if _alive(p, s)]:
                say(f"the hub left {len(left)} process(es) running; stopping them: {[p for p, _ in left]}")
                _terminate(left)
            stopped.append("hub")
        if self.proxy and self.proxy.poll() is None:
            say("stopping the proxy...")
            _terminate([(self.proxy.pid, st[2])] if (st := _proc_stat(self.proxy.pid)) else [], timeout=15)
            self.proxy.wait()
            stopped.append("proxy")
        if self.forwarder:
            self.forwarder.close()
        if self.cluster:
            self.cluster.close()
        if self.rig:
            what = "OpenPBS rig" if isinstance(self.rig, OpenPBSRig) else "Slurm rig"
            try:
                if self.rig.procs:
                    say(f"stopping the {what}...")
                    stopped.append(what)
                self.rig.stop()
            except RigError as e:
                say(f"stopping the {what} failed: {e}")
                clean = False
            if strays := self.rig.stray_processes():
                say(f"processes still use the rig: {strays}")
                clean = False
        if self.as_root and self.password:  # no login with the printed password while no demo runs
            with contextlib.suppress(OSError, subprocess.CalledProcessError):
                subprocess.run(["usermod", "-L", self.user], check=True, capture_output=True, timeout=30)
                say(f"locked the password of {self.user} (the next run sets it again)")
        if stopped or not clean:
            say(f"stopped ({', '.join(stopped)})" if clean else "stopped, with problems")
        return clean


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_with_parent() -> None:
    """Have the kernel send this process SIGTERM when its parent (nox) ends: a SIGTERM sent to nox
    alone ends nox without a word to its children. A parent gone already is a SIGTERM now."""
    import ctypes

    parent = os.getppid()
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _still_stopping(signum: int, frame: object) -> None:
    say("still stopping, please wait...")


def _signals(handler) -> None:
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:  # nohup: keep ignoring hang-ups
        signal.signal(signal.SIGHUP, handler)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="nox -s demo --",
        description="Build an offline demo site and run the whole hub on 127.0.0.1 (Ctrl-C stops it).",
    )
    ap.add_argument(
        "--dir",
        type=Path,
        default=default_dir(),
        help="where the demo keeps its site, builds, state and logs; reused by the next run "
        "(default: $HUBSTOCK_DEMO_DIR or /var/tmp/hubstock-demo-<uid>)",
    )
    ap.add_argument("--port", type=int, default=8000, help="the hub's port (the next free one if busy)")
    ap.add_argument("--user", default="demo", help="the demo user's name (default: demo)")
    ap.add_argument(
        "--scheduler",
        choices=("slurm", "pbs"),
        default="slurm",
        help="as root, the private cluster that runs the servers: Slurm, or OpenPBS (PBS Pro; needs "
        "HUBSTOCK_OPENPBS_SOURCE, the source tarball, or HUBSTOCK_OPENPBS_PREFIX) (default: slurm)",
    )
    ap.add_argument(
        "--check", action="store_true", help="bring it up, log in, start a server, check it, stop, exit"
    )
    args = ap.parse_args(argv)
    if not USER_RE.match(args.user):
        ap.error(f"--user {args.user!r}: use lower-case letters, digits, '_' and '-'")
    if not 0 < args.port < 65536:
        ap.error(f"--port {args.port}: not a TCP port")
    return args


def _check_user(name: str, homes: Path) -> None:
    """As root, the demo sets the password of its user: never of someone else's account."""
    try:
        home = Path(pwd.getpwnam(name).pw_dir)
    except KeyError:
        return
    if home != homes / name:
        raise DemoError(
            f"a user named {name!r} already exists (home {home}) and is not this demo's; "
            f"pass --user with another name."
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _signals(_interrupt)
    _stop_with_parent()
    demo: Demo | None = None
    code = 0
    try:
        demo = Demo(args)
        lock = open(demo.dir / ".demo.lock", "w")  # noqa: SIM115 - held until the process ends
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DemoError(
                f"another demo runs with {demo.dir}; stop it first (Ctrl-C) or pass another --dir."
            ) from None
        if demo.as_root:
            require_binaries()
            _check_user(args.user, demo.dir / "homes")
        elif args.scheduler == "pbs":
            raise DemoError(
                "--scheduler pbs needs root (the OpenPBS rig, PAM users, a hub that switches users)"
            )
        demo.stop_leftovers()
        t0 = time.monotonic()
        generation, kernels = demo.build()
        demo.start()
        say(f"up in {time.monotonic() - t0:.0f} s")
        demo.show(generation, kernels)
        if args.check:
            demo.check(kernels)
        else:
            while demo.hub and demo.hub.proc and demo.hub.proc.poll() is None:
                time.sleep(1)
            raise DemoError(f"the hub exited ({demo.hub.proc.returncode}):\n{demo.hub.log_tail()}")
    except KeyboardInterrupt:
        print(flush=True)
        say("interrupted")
        code = 130 if args.check else 0
    except (DemoError, HubstockError, RigError, HubError, RuntimeError, OSError) as e:
        say(f"{'check failed' if args.check else 'failed'}: {e}")
        if demo and demo.hub and not isinstance(e, HubError):
            say(f"the hub's log: {demo.hub.log_path}")
        code = 1
    finally:
        _signals(_still_stopping)
        if demo and not demo.stop():
            code = code or 1
    if demo and not args.check and code == 0:
        remove = f"chmod -R u+w {demo.dir} && rm -rf {demo.dir}"
        if demo.as_root:
            remove = f"userdel -r {args.user}; {remove}"
        say(f"the builds stay in {demo.dir} for the next run; to remove it all: {remove}")
    return code


if __name__ == "__main__":
    sys.exit(main())
