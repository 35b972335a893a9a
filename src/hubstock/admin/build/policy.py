"""The server environment's package policy: required and forbidden packages."""

from __future__ import annotations

import re
from collections.abc import Iterable

from ...errors import BuildError
from ...site import Site


def canonicalize_name(name: str) -> str:
    """A package name as PEP 503 compares them (``packaging.utils.canonicalize_name``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def check_server_packages(site: Site, env: str, names: Iterable[str]) -> None:
    """Refuse a server environment that lacks a required package or has a forbidden one."""
    policy = site.settings.server
    if env != policy.env:
        return
    have = {canonicalize_name(n) for n in names}
    for bad in policy.forbidden:
        if canonicalize_name(bad) in have:
            raise BuildError(
                f"the server env {env!r} contains {bad!r}, which the site forbids "
                f"([server] forbidden in hubstock.toml); remove it from envs/{env}/environment.yml "
                "and lock again."
            )
    for need in policy.required:
        if canonicalize_name(need) not in have:
            raise BuildError(
                f"the server env {env!r} lacks {need!r}, which the site requires "
                f"([server] required in hubstock.toml); add it to envs/{env}/environment.yml and lock again."
            )
