"""``python -m tests.sandbox az-login``: a real ``az login`` against the sandbox's Entra emulator.

In the current ``AZURE_CONFIG_DIR`` (az's default ``~/.azure`` when unset), as an Azure Stack user would:

    az cloud register --name SandboxCloud --endpoint-active-directory https://127.0.0.1:<entra port>
        --endpoint-resource-manager https://127.0.0.1:<arm port>/ --endpoint-active-directory-resource-id
        https://management.core.windows.net/ ... --skip-endpoint-discovery     (az cloud update when registered)
    az cloud set --name SandboxCloud
    az config set core.instance_discovery=false
    az login --service-principal -u <app> -p <secret> | --certificate <pem> | --federated-token <jwt> --tenant <t>

with ``REQUESTS_CA_BUNDLE`` on the sandbox's CA bundle. Nothing in az is patched: MSAL, az's token cache and its
refreshes run as they do against Entra. Later az commands need the same ``REQUESTS_CA_BUNDLE`` (sandbox.json
``entra.env``). ``--az`` defaults to the project's ``.venv-az/bin/az``, else ``.venv/bin/az``.
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
from pathlib import Path

from ..control import read_info

PROJECT = Path(__file__).resolve().parents[3]
CLOUD = "SandboxCloud"
IDENTITIES = ("sp", "cert", "federated")


class AzLoginError(RuntimeError):
    """One line saying what failed."""


def default_az() -> Path:
    for candidate in (PROJECT / ".venv-az" / "bin" / "az", PROJECT / ".venv" / "bin" / "az"):
        if candidate.exists():
            return candidate
    raise AzLoginError(f"no az in {PROJECT / '.venv-az'} or {PROJECT / '.venv'}: run make, or pass --az")


def az_env(entra: dict, base: dict | None = None) -> dict:
    """The environment az runs with: the sandbox CA trusted, no telemetry."""
    env = dict(os.environ if base is None else base)
    env["REQUESTS_CA_BUNDLE"] = entra["env"]["REQUESTS_CA_BUNDLE"]
    env.setdefault("AZURE_CORE_COLLECT_TELEMETRY", "false")
    env.setdefault("AZURE_CORE_NO_COLOR", "true")
    env.setdefault("AZURE_CORE_SURVEY_MESSAGE", "false")
    env["PYTHONSAFEPATH"] = "1"  # not the working directory's packages (an azext_* checkout) in az's sys.path
    return env


def _run(az: Path, args: list[str], env: dict, step: str) -> str:
    try:
        proc = subprocess.run([str(az), *args], capture_output=True, text=True, env=env, timeout=180,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AzLoginError(f"{step}: {type(e).__name__}: {e}") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR:")]
        message = (errors[0] if errors else lines[-1] if lines else f"exit code {proc.returncode}")
        raise AzLoginError(f"{step} failed: {message.removeprefix('ERROR:').strip()}")
    return proc.stdout


def _registered(config_dir: Path) -> bool:
    clouds = configparser.ConfigParser()
    try:
        clouds.read(config_dir / "clouds.config")
    except configparser.Error:
        return False
    return clouds.has_section(CLOUD)


def az_login(directory, az=None, identity: str = "sp") -> str:
    """Sign ``az`` in to the sandbox in ``directory``; returns the line saying who is signed in."""
    if identity not in IDENTITIES:
        raise AzLoginError(f"--identity must be one of {', '.join(IDENTITIES)}, not {identity!r}")
    info = read_info(directory)
    entra = info.get("entra")
    if not entra:
        raise AzLoginError(f"the sandbox in {directory} has no Entra emulator: bring it up without --no-entra")
    az = Path(az) if az else default_az()
    if not az.exists():
        raise AzLoginError(f"{az} does not exist")
    env = az_env(entra)
    config_dir = Path(env.get("AZURE_CONFIG_DIR") or Path.home() / ".azure")
    arm = info["arm"]["url"].rstrip("/") + "/"
    endpoints = ["--endpoint-active-directory", entra["url"], "--endpoint-resource-manager", arm,
                 "--endpoint-active-directory-resource-id", entra["arm_resource"],
                 "--endpoint-active-directory-graph-resource-id", "https://graph.windows.net/",
                 "--endpoint-management", entra["arm_resource"],
                 "--endpoint-microsoft-graph-resource-id", "https://graph.microsoft.com/",
                 "--skip-endpoint-discovery"]
    verb = "update" if _registered(config_dir) else "register"
    try:
        _run(az, ["cloud", verb, "--name", CLOUD, *endpoints, "--only-show-errors"], env, f"az cloud {verb}")
    except AzLoginError as e:
        if "unrecognized arguments" not in str(e):
            raise
        # An az older than the Microsoft Graph endpoint and --skip-endpoint-discovery (2.60): it discovers the
        # cloud from the ARM emulator's /metadata/endpoints, and the arguments given still win.
        _run(az, ["cloud", verb, "--name", CLOUD, *endpoints[:-3], "--only-show-errors"], env, f"az cloud {verb}")
    _run(az, ["cloud", "set", "--name", CLOUD, "--only-show-errors"], env, "az cloud set")
    _run(az, ["config", "set", "core.instance_discovery=false", "--only-show-errors"], env, "az config set")
    if identity == "sp":
        who = entra["service_principal"]
        credential = ["-p", who["secret"]]
    elif identity == "cert":
        who = entra["certificate_principal"]
        credential = ["--certificate", who["certificate"]]
    else:
        who = dict(entra["workload_identity"], name="sandbox-workload")
        try:
            credential = ["--federated-token", Path(who["token_file"]).read_text().strip()]
        except OSError as e:
            raise AzLoginError(f"cannot read the workload identity token {who['token_file']}: {e.strerror}") \
                from None
    out = _run(az, ["login", "--service-principal", "-u", who["client_id"], *credential, "--tenant", entra["tenant"],
                    "-o", "json", "--only-show-errors"], env, "az login")
    try:
        subs = json.loads(out)
        sub = next(s for s in subs if s.get("isDefault")) if subs else None
    except (ValueError, StopIteration, AttributeError):
        raise AzLoginError(f"az login printed no subscription list: {out.strip()[:200]}") from None
    where = f"subscription '{sub['name']}' ({sub['id']})" if sub else "no subscription"
    return (f"signed in to {CLOUD} as service principal {who.get('name', who['client_id'])} ({who['client_id']}) "
            f"of tenant {entra['tenant']}, {where}; az needs REQUESTS_CA_BUNDLE={entra['env']['REQUESTS_CA_BUNDLE']}")
