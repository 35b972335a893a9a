"""Which wheel of a locked pip package the compute nodes take: uv locks every artifact of a
package; hubstock keeps the one that fits the nodes' platform and glibc best (or the sdist)."""

from __future__ import annotations

from packaging.tags import Tag, compatible_tags, cpython_tags, mac_platforms
from packaging.utils import parse_wheel_filename

from ...errors import SolveError
from ...site import Site

_ARCH = {"linux-64": "x86_64", "linux-aarch64": "aarch64", "linux-ppc64le": "ppc64le"}
_UV_PLATFORM = {
    "osx-64": "x86_64-apple-darwin",
    "osx-arm64": "aarch64-apple-darwin",
    "win-64": "x86_64-pc-windows-msvc",
}


def uv_platform(site: Site, platform: str) -> str:
    if platform in _ARCH:
        minor = site.settings.virtual_packages.glibc.split(".")[1]
        return f"{_ARCH[platform]}-manylinux_2_{minor}"
    return _UV_PLATFORM[platform]


def target_tags(pyver: tuple[int, int], platform: str, glibc: str) -> list[Tag]:
    """Wheel tags the compute nodes accept, most specific first."""
    if platform in _ARCH:
        arch = _ARCH[platform]
        top = int(glibc.split(".")[1])
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        plats = []
        for m in range(top, 4, -1):
            plats.append(f"manylinux_2_{m}_{arch}")
            if m in legacy:
                plats.append(f"{legacy[m]}_{arch}")
        plats.append(f"linux_{arch}")
    elif platform.startswith("osx"):
        plats = list(mac_platforms((11, 0), "arm64" if platform == "osx-arm64" else "x86_64"))
    else:
        plats = ["win_amd64"]
    interp = f"cp{pyver[0]}{pyver[1]}"
    return [*cpython_tags(pyver, platforms=plats), *compatible_tags(pyver, interp, plats)]


def pick_artifact(pkg: dict, tags: list[Tag], env: str) -> tuple[str, str]:
    rank = {t: i for i, t in enumerate(tags)}
    best: tuple[int, str, str] | None = None
    for wheel in pkg.get("wheels", []):
        url = wheel["url"]
        _, _, _, wtags = parse_wheel_filename(url.rsplit("/", 1)[-1])
        score = min((rank[t] for t in wtags if t in rank), default=None)
        if score is not None and (best is None or score < best[0]):
            best = (score, url, wheel["hashes"]["sha256"])
    if best:
        return best[1], best[2]
    sdist = pkg.get("sdist")
    if sdist and sdist.get("hashes", {}).get("sha256"):
        return sdist["url"], sdist["hashes"]["sha256"]
    raise SolveError(
        f"pip package {pkg['name']} {pkg['version']} of env {env!r} has no wheel for the compute "
        "nodes and no sdist with a sha256; pin another version."
    )
