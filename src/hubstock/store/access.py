"""Builds and kernels for some Unix groups only, enforced by the filesystem.

A restricted folder (a build's top folder, a generation's ``restricted/<kernel>/``) is the one
door to everything below it, so nothing inside changes:

- its group is the first of the allowed groups, its mode ``0550`` (owner and group read and
  enter; nobody else anything);
- each further group gets an entry of its own in the folder's POSIX access ACL (``r-x``, with
  the mask ``r-x``), written as the ``system.posix_acl_access`` attribute, as ``setfacl`` does.

A user outside the groups cannot list, read or run anything below the folder, whatever path or
``kernel.json`` they use; the caches the build's files are hard-linked from are the admin's
alone (``store.perms``). Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import re
import stat
import struct
from collections.abc import Iterable
from pathlib import Path

from ..errors import AccessError

#: the mode of a restricted folder: read and enter for its owner and group, nothing for others
CLOSED_MODE = 0o550
#: what a group name may be (POSIX portable names, as useradd takes them, plus '.' and '@')
GROUP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9._@-]{0,63}\$?$")

_ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_USER_OBJ, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x04, 0x08, 0x10, 0x20
_UNDEFINED = 0xFFFFFFFF
_RX = 0o5


def group_ids(groups: Iterable[str], where: str) -> list[int]:
    """The gid of each group, in order; an :class:`AccessError` naming the first that does not
    exist on this machine (``where``: who named it, for the message)."""
    out = []
    for name in groups:
        try:
            out.append(grp.getgrnam(name).gr_gid)
        except KeyError:
            raise AccessError(
                f"{where} names the group {name!r}, which does not exist on this machine "
                f"(`getent group {name}` finds nothing); create it (groupadd, or in the site's "
                "directory service) or fix the name."
            ) from None
    return out


def _acl_bytes(mode: int, extra_gids: list[int]) -> bytes:
    entries = [(_USER_OBJ, (mode >> 6) & 7, _UNDEFINED), (_GROUP_OBJ, (mode >> 3) & 7, _UNDEFINED)]
    entries += [(_GROUP, _RX, gid) for gid in sorted(set(extra_gids))]
    entries += [(_MASK, _RX, _UNDEFINED), (_OTHER, mode & 7, _UNDEFINED)]
    return struct.pack("<I", _ACL_VERSION) + b"".join(struct.pack("<HHI", *e) for e in entries)


def acl_groups(path: Path | str) -> dict[int, int]:
    """The named-group entries of ``path``'s access ACL: ``{gid: perms}`` (empty without an ACL)."""
    try:
        data = os.getxattr(path, _ACL_XATTR, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for off in range(4, len(data) - 7, 8):
        tag, perm, gid = struct.unpack_from("<HHI", data, off)
        if tag == _GROUP:
            out[gid] = perm
    return out


def give_to_group(path: Path, group: str, where: str) -> None:
    """Make ``group`` the group of ``path`` (its mode unchanged): an :class:`AccessError` when this
    account may not (only root, or a member of the group, may give a file to it)."""
    gid = group_ids([group], where)[0]
    try:
        os.chown(path, -1, gid, follow_symlinks=False)
    except PermissionError:
        raise AccessError(
            f"cannot give {path} to the group {group!r} ({where}): this account is not a member of it; "
            "add the admin account to the group (or run as root)."
        ) from None


def close_to(path: Path, groups: list[str], where: str) -> None:
    """Give ``path`` (a folder) to ``groups`` alone: group, mode 0550, an ACL for further groups."""
    gids = group_ids(groups, where)
    give_to_group(path, groups[0], where)
    os.chmod(path, CLOSED_MODE)
    if len(gids) > 1:
        try:
            os.setxattr(path, _ACL_XATTR, _acl_bytes(CLOSED_MODE, gids[1:]), follow_symlinks=False)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
                raise AccessError(
                    f"{where} names {len(gids)} groups, which needs POSIX ACLs, and the filesystem of "
                    f"{path} has none; mount it with ACLs (the 'acl' option) or name one group."
                ) from None
            raise
    else:
        with contextlib.suppress(OSError):
            os.removexattr(path, _ACL_XATTR, follow_symlinks=False)


def access_problems(path: Path, groups: list[str]) -> list[str]:
    """What makes ``path`` more open than ``groups`` alone (or closed to one of them): one short
    phrase each, empty when it is as :func:`close_to` left it."""
    try:
        st = os.lstat(path)
    except OSError as e:
        return [f"cannot be checked ({e.strerror})"]
    problems = []
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007:
        problems.append(f"open to others (mode {mode:04o})")
    if mode & 0o050 != 0o050:
        problems.append(f"closed to its own group (mode {mode:04o})")
    try:
        gids = group_ids(groups, str(path))
    except AccessError:
        return [*problems, f"a group of {', '.join(groups)} no longer exists"]
    if st.st_gid != gids[0]:
        problems.append(f"its group is {_group_name(st.st_gid)}, not {groups[0]}")
    named = acl_groups(path)
    for gid, name in zip(gids[1:], groups[1:], strict=True):
        if named.get(gid, 0) & _RX != _RX:
            problems.append(f"the group {name} has no ACL entry")
    for gid in set(named) - set(gids):
        problems.append(f"the group {_group_name(gid)} has an ACL entry")
    return problems


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def user_groups(user: str) -> set[str]:
    """The names of the groups ``user`` is in, as the system resolves them now (``getgrouplist``);
    empty for a user this machine does not know."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return set()
    return {_group_name(g) for g in os.getgrouplist(user, pw.pw_gid)}


def may_use(groups: Iterable[str], member_of: set[str]) -> bool:
    """Whether someone in ``member_of`` may use what ``groups`` restricts (no groups: everybody)."""
    groups = list(groups)
    return not groups or bool(member_of.intersection(groups))
