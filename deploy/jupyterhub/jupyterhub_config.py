"""JupyterHub for a shared qwidgets server: real unix users, one shared venv, private workspaces.

Set-up steps are in README.md beside this file. Every path can be moved with an environment
variable read by the hub (defaults in brackets):

    QW_HUB_PREFIX     [/opt/qw-hub]            venv/ and node_modules/ made by .ci/setup-hub.sh
    QW_HUB_VENV       [$QW_HUB_PREFIX/venv]    the venv every user's server and kernel run from
    QW_HUB_DATA       [/srv/qw-hub]            hub database and cookie secret (root only, 0700)
    QW_TUTORIALS_DIR  [$QW_HUB_PREFIX/tutorials]  read-only notebooks copied to each user on spawn
    QW_HUB_BIND_URL   [http://127.0.0.1:8000]  public URL (put TLS in front of it for a real server)
    QW_HUB_GROUP      [qwidgets]               unix group whose members may log in (PAM)

The hub runs as root: LocalProcessSpawner starts each single-user server as the user's own uid,
so file permissions (homes 0700, workspaces 0700) keep users apart.
"""
import asyncio
import os
import pwd

c = get_config()  # noqa: F821 -- injected by JupyterHub's config loader

PREFIX = os.environ.get("QW_HUB_PREFIX", "/opt/qw-hub")
VENV = os.environ.get("QW_HUB_VENV", f"{PREFIX}/venv")
DATA = os.environ.get("QW_HUB_DATA", "/srv/qw-hub")
TUTORIALS = os.environ.get("QW_TUTORIALS_DIR", f"{PREFIX}/tutorials")
USER_PATH = f"{VENV}/bin:/usr/local/bin:/usr/bin:/bin"

os.makedirs(DATA, mode=0o700, exist_ok=True)

# ----- hub, proxy, database -------------------------------------------------------------------
c.JupyterHub.bind_url = os.environ.get("QW_HUB_BIND_URL", "http://127.0.0.1:8000")
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.db_url = f"sqlite:///{DATA}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{DATA}/jupyterhub_cookie_secret"
c.ConfigurableHTTPProxy.command = [f"{PREFIX}/node_modules/.bin/configurable-http-proxy"]
c.ConfigurableHTTPProxy.pid_file = f"{DATA}/jupyterhub-proxy.pid"

# ----- who may log in: unix accounts (PAM) in one group ----------------------------------------
c.JupyterHub.authenticator_class = "pam"
c.PAMAuthenticator.allowed_groups = {os.environ.get("QW_HUB_GROUP", "qwidgets")}

# ----- single-user servers: the shared venv, as the user ----------------------------------------
c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = [f"{VENV}/bin/jupyterhub-singleuser"]
c.Spawner.default_url = "/lab"
c.Spawner.notebook_dir = "~"
# Only these variables pass from the hub (root) to users: in particular not PYTHONPATH, which
# could make kernels import a checkout instead of the installed package.
c.Spawner.env_keep = ["LANG", "LC_ALL"]
c.Spawner.environment = {"PATH": USER_PATH}
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 30


async def copy_tutorials(spawner):
    """Copy the shared tutorials into the user's workspace before their server starts.

    Runs `engine.workspace.ensure_tutorials` as the user (uid, gid, their groups only, umask 077),
    so the copies belong to them; existing copies are never overwritten. A failure is logged
    and does not block the spawn.
    """
    if not os.path.isdir(TUTORIALS):
        spawner.log.info("qwidgets: no tutorials at %s, nothing to copy", TUTORIALS)
        return
    pw = pwd.getpwnam(spawner.user.name)
    code = "import sys; from engine.workspace import ensure_tutorials; print(len(ensure_tutorials(sys.argv[1])))"
    proc = await asyncio.create_subprocess_exec(
        f"{VENV}/bin/python", "-c", code, TUTORIALS,
        user=pw.pw_uid, group=pw.pw_gid, extra_groups=os.getgrouplist(pw.pw_name, pw.pw_gid),
        umask=0o077, cwd=pw.pw_dir, env={"HOME": pw.pw_dir, "USER": pw.pw_name, "PATH": USER_PATH},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    except asyncio.TimeoutError:
        proc.kill()
        spawner.log.error("qwidgets: copying tutorials for %s timed out", pw.pw_name)
        return
    if proc.returncode:
        spawner.log.error("qwidgets: copying tutorials for %s failed: %s", pw.pw_name, err.decode()[-2000:])
    else:
        spawner.log.info("qwidgets: copied %s tutorial file(s) for %s", out.decode().strip(), pw.pw_name)


c.Spawner.pre_spawn_hook = copy_tutorials
