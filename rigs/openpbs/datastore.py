"""OpenPBSRig's first (cold) start: PBS_HOME, pbs_mom's config and the PostgreSQL datastore,
run by a system user of its own."""

from __future__ import annotations

import os
import pwd

from rigs.slurm_rig import _run  # shared process helpers

from .build import _built_version
from .packages import _pg_bin, _which


class _DatastoreMixin:
    """OpenPBSRig's data user and the initialisation of a cold start."""

    def _ensure_data_user(self) -> None:
        try:
            pwd.getpwnam(self.data_user)
        except KeyError:
            # PostgreSQL runs as it; pbs_dataservice checks `su - USER -c cd`: a shell and a home
            _run(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--home-dir",
                    "/",
                    "--shell",
                    "/bin/sh",
                    "--comment",
                    "hubstock OpenPBS datastore",
                    self.data_user,
                ]
            )

    def _initialise(self, deadline: float) -> None:
        """PBS_HOME (pbs_postinstall), pbs_mom's config, and the datastore (by hand: the stock
        pbs_habitat wants /var/run/postgresql and deletes the datastore when that fails)."""
        assert self.exec_dir is not None
        version = _built_version(self.prefix)
        env = {**self._daemon_env(), "PBS_DATA_SERVICE_USER": self.data_user}
        self._ns_exec(
            "initialise",
            [
                f"{self.exec_dir}/libexec/pbs_postinstall",
                "server",
                version,
                str(self.exec_dir),
                str(self.home),
                self.data_user,
                "sameconf",
            ],
            env=env,
        )
        with open(self.home / "mom_priv" / "config", "a") as f:
            # $usecp: the job's output is copied, not sent with pbs_rcp (rsh), or the job sits in E;
            # poll the job's processes every 1-2 s, not 10-120 s (a qdel'ed job ends sooner)
            f.write("$usecp *:/ /\n$min_check_poll 1\n$max_check_poll 2\n")
        self._initialise_datastore()

    def _initialise_datastore(self) -> None:
        d, port, user = self.datastore, self.ports["data"], self.data_user
        d.mkdir(mode=0o700)
        pw = pwd.getpwnam(user)
        os.chown(d, pw.pw_uid, pw.pw_gid)
        as_user = [_which("runuser") or "runuser", "-u", user, "--"]
        ds = "datastore"
        self._ns_exec(
            ds,
            [*as_user, _pg_bin("initdb"), "-D", str(d), "-U", user, "-E", "SQL_ASCII", "--locale=C"],
            cwd=d,
            timeout=120,
        )
        with open(d / "postgresql.conf", "a") as f:
            # what pbs_db_utility sets, with the socket and lock inside PBS_HOME (Debian's
            # /var/run/postgresql belongs to postgres: the data user cannot write there)
            f.write(
                "# --- hubstock OpenPBS rig ---\n"
                f"port = {port}\nlisten_addresses = '*'\nunix_socket_directories = '{d}'\n"
                "standard_conforming_strings = on\nlogging_collector = on\n"
                "log_filename = 'pbs_dataservice_log.%a'\nlog_truncate_on_rotation = on\n"
                "log_rotation_age = 1440\nlog_line_prefix = '%t'\n"
            )
        pg_env = {**self._daemon_env(), "PGHOST": str(d), "PGPORT": str(port)}
        self._ns_exec(
            ds,
            [
                *as_user,
                _pg_bin("pg_ctl"),
                "-D",
                str(d),
                "-w",
                "-t",
                "60",
                "-l",
                str(d / "pg_init.log"),
                "start",
            ],
            env=pg_env,
            cwd=d,
            timeout=90,
        )
        try:
            self._ns_exec(ds, [*as_user, _pg_bin("createdb"), "pbs_datastore"], env=pg_env, cwd=d)
            # its leading "drop schema pbs" fails on a new database: expected (psql goes on)
            self._ns_exec(
                ds,
                [
                    *as_user,
                    _pg_bin("psql"),
                    "-q",
                    "-d",
                    "pbs_datastore",
                    "-f",
                    f"{self.exec_dir}/libexec/pbs_db_schema.sql",
                ],
                env=pg_env,
                cwd=d,
            )
            # a random password for the data user, in server_priv/db_password
            self._ns_exec(ds, [f"{self.exec_dir}/sbin/pbs_ds_password", "-r"], env=pg_env, cwd=d)
        finally:
            self._ns_exec(
                ds,
                [*as_user, _pg_bin("pg_ctl"), "-D", str(d), "-w", "-m", "fast", "stop"],
                env=pg_env,
                cwd=d,
                timeout=60,
                check=False,
            )
        hba = d / "pg_hba.conf"
        kept = [
            line for line in hba.read_text().splitlines() if not line.strip() or line.lstrip().startswith("#")
        ]
        kept += [  # password only from now on, as pbs_db_utility leaves it
            "local   all   all                  md5",
            "host    all   all   0.0.0.0/0      md5",
            "host    all   all   ::1/128        md5",
        ]
        hba.write_text("\n".join(kept) + "\n")
