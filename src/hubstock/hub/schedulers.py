"""The schedulers' commands and job-state patterns the spawners start from: plain data, so that
what submits a job without the hub (:mod:`hubstock.batchjob`) reads them without importing
JupyterHub. :mod:`hubstock.hub.spawner` makes them the spawners' traitlets defaults.
"""

from __future__ import annotations

#: batchspawner's SlurmSpawner defaults (tests/test_batchjob.py checks that they still are)
SLURM_COMMANDS: dict[str, str] = {
    "batch_submit_cmd": "sbatch --parsable",
    "batch_query_cmd": "squeue -h -j {job_id} -o '%T %B'",
    "batch_cancel_cmd": "scancel {job_id}",
    "state_pending_re": r"^(?:PENDING|CONFIGURING)",
    "state_running_re": r"^(?:RUNNING|COMPLETING)",
}

#: what differs between PBS Pro and Torque-compatible commands: the defaults of these settings.
#: Every PBS job state, on purpose (``qstat -f``'s ``job_state``):
#: - pending (the job lives and may yet serve; the hub keeps waiting, and keeps a running server):
#:   Q queued, H held, W waiting for its start time, T in transit, S suspended (by the scheduler
#:   or an operator), U suspended while its workstation is busy, B an array job that has begun;
#:   and R while PBS has not yet named its ``exec_host`` (PBSSpawner.state_ispending);
#: - running: R with an ``exec_host``;
#: - ended (the server is gone): E exiting, F finished (PBS Pro's history, ``qstat -x``), X a
#:   finished subjob, M moved to another server, C completed (Torque), and a job qstat no longer
#:   knows ("Unknown Job Id");
#: - unknown (the server does not answer; the job is taken to be alive): ``state_unknown_re``.
PBS_FLAVOURS: dict[str, dict[str, str]] = {
    "pro": {
        # -f: no background qsub daemon. It serves every later qsub of the same uid for a minute
        # with the identity it started with: a user re-created with a reused uid (or with new
        # groups) would submit as the old one
        "batch_submit_cmd": "qsub -f",
        "batch_query_cmd": "qstat -fx {job_id}",
        "batch_cancel_cmd": "qdel {job_id}",
        "batch_force_cancel_cmd": "qdel -W force {job_id}",
        "state_pending_re": r"job_state = [QHWTSUB]\b",
        "state_running_re": r"job_state = R\b",
        "state_exechost_re": r"exec_host = ([\w.-]+)/",
        "state_unknown_re": r"Connection refused|cannot connect to server|Couldn't connect to cluster|Communication failure",
        "batch_status_cmd": "qstat -fx {job_ids}",
        # PBSE_UNKJOBID is exit status 153
        "state_gone_re": r"Unknown Job Id|Job has finished|\(exit status 153\)",
    },
    "torque": {
        # Torque's qstat has no -x; Slurm's torque wrappers' qsub cannot read stdin
        "batch_submit_cmd": "qsub",
        "batch_query_cmd": "qstat -f {job_id}",
        "batch_cancel_cmd": "qdel {job_id}",
        "batch_force_cancel_cmd": "",
        "state_pending_re": r"job_state = [QHWTS]\b",
        "state_running_re": r"job_state = R",
        "state_exechost_re": r"exec_host = ([\w.-]+)/",
        "state_unknown_re": r"Problem loading jobs|Unable to contact slurm controller|cannot connect to server",
        "batch_status_cmd": "qstat -f {job_ids}",
        # Slurm's qstat says nothing of a job it does not know, and exits with 153 as Torque's does
        "state_gone_re": r"Unknown Job Id|Job has finished|\(exit status 153\)",
    },
}
