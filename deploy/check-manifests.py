#!/usr/bin/env python3
"""make k8s-check: the Kubernetes manifests and the compose file against the real server.

    python3 deploy/check-manifests.py SERVER_BINARY

Reads the flags and their ATTNLM_* variables from `SERVER_BINARY --help` (no list is kept
here), then checks deploy/k8s/*.yaml and deploy/docker-compose.yml:
  - the expected kinds are there; selectors, the HPA's and the Service's targets match the
    Deployment; the session store is the Redis Deployment and Service of the manifests (and
    of the compose file), the session secret a Secret mounted where the server reads it;
  - every ATTNLM_* name used is one the server reads, and the server starts with the
    ConfigMap's settings (port and host changed to a free loopback port) and answers the
    probes' paths with 200;
  - probes are /ready (readiness) and /health (liveness) on the admin container port, which
    is ATTNLM_ADMIN_PORT; the Service's targetPort is the main port, ATTNLM_PORT;
  - the grace period outlasts the preStop pause plus ATTNLM_DRAIN_TIMEOUT;
  - non-root, read-only root filesystem, no privilege escalation, CPU and memory requests and
    limits, and no more workers than the CPU limit.
Prints one line per check; exits 1 if any fails.
"""
import glob
import http.client
import os
import re
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
from attnlm_server import Server, StartError  # noqa: E402
failures = 0


def report(ok, what):
    global failures
    print("%s %s" % ("ok  " if ok else "FAIL", what))
    if not ok:
        failures += 1
    return ok


def server_flags(binary):
    """{ENV_NAME: default string} from --help."""
    out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30).stdout
    flags = {}
    for m in re.finditer(r"^\s+--([a-z-]+)\s+(ATTNLM_[A-Z_]+)\s+default (\S+)", out, re.M):
        flags[m.group(2)] = m.group(3).strip('"')
    return flags


def cpu_cores(q):
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def run_server(binary, env):
    """Starts the server with no flags, every setting from env (the port file too, as
    ATTNLM_PORT_FILE), GETs /ready and /health (on the admin port when there is one), stops it.
    Returns (statuses, rc, log)."""
    env = dict(env, ATTNLM_HOST="127.0.0.1", ATTNLM_PORT="0",
               ATTNLM_MODEL=os.path.join(ROOT, "models", "default.safetensors"))
    if "ATTNLM_ADMIN_PORT" in env:
        env["ATTNLM_ADMIN_PORT"] = "0"
    try:
        srv = Server(binary=binary, host=None, port=None, model=None, env=env, port_file_env=True,
                     startup_timeout=30)
    except StartError as e:
        return {}, None, str(e)
    statuses = {}
    try:
        for path in ("/ready", "/health"):
            if srv.admin_port is not None:
                c = http.client.HTTPConnection("127.0.0.1", srv.admin_port, timeout=10)
                c.request("GET", path)
                statuses[path] = c.getresponse().status
                c.close()
            else:
                statuses[path] = srv.request("GET", path, timeout=10)[0]
    finally:
        rc = srv.stop(60)
    return statuses, rc, srv.stderr()


def main():
    if len(sys.argv) not in (2, 3):
        print("usage: check-manifests.py SERVER_BINARY [K8S_DIR]", file=sys.stderr)
        return 2
    binary = sys.argv[1]
    k8s = sys.argv[2] if len(sys.argv) == 3 else os.path.join(ROOT, "deploy", "k8s")
    flags = server_flags(binary)
    if not report(len(flags) >= 10, "%d ATTNLM_* settings read from %s --help" % (len(flags), binary)):
        return 1

    docs = []
    for path in sorted(glob.glob(os.path.join(k8s, "*.yaml"))):
        with open(path) as f:
            docs += [(os.path.basename(path), d) for d in yaml.safe_load_all(f) if d]
    by_kind = {}
    for name, d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)
    for kind in ("ConfigMap", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
        report(len(by_kind.get(kind, [])) == 1, "one %s" % kind)

    def named(kind, name):
        found = [d for d in by_kind.get(kind, []) if d["metadata"]["name"] == name]
        report(len(found) == 1, "a %s %s" % (kind, name))
        return found[0] if found else None

    dep, svc = named("Deployment", "attnlm"), named("Service", "attnlm")
    rdep, rsvc = named("Deployment", "attnlm-redis"), named("Service", "attnlm-redis")
    if failures:
        return 1
    cm = by_kind["ConfigMap"][0]
    hpa = by_kind["HorizontalPodAutoscaler"][0]
    pdb = by_kind["PodDisruptionBudget"][0]
    with open(os.path.join(k8s, "kustomization.yaml")) as f:
        kust = yaml.safe_load(f)
    report(sorted(kust["resources"]) == sorted({n for n, _ in docs if n != "kustomization.yaml"}),
           "kustomization.yaml lists every manifest")

    # ---- names and settings ------------------------------------------------------------
    settings = {k: str(v) for k, v in cm["data"].items()}
    pod = dep["spec"]["template"]["spec"]
    ctr = pod["containers"][0]
    used = set(settings) | {e["name"] for e in ctr.get("env", []) if e["name"].startswith("ATTNLM_")}
    unknown = sorted(n for n in used if n not in flags)
    report(not unknown, "every ATTNLM_* name is read by the server%s" % (": unknown %s" % unknown if unknown else ""))
    ref = [e["configMapRef"]["name"] for e in ctr.get("envFrom", []) if "configMapRef" in e]
    report(ref == [cm["metadata"]["name"]], "the container takes its settings from ConfigMap %s" % cm["metadata"]["name"])
    for e in ctr.get("env", []):
        if e["name"] == "ATTNLM_API_KEY":
            report("secretKeyRef" in e.get("valueFrom", {}), "ATTNLM_API_KEY comes from a Secret")
    report(settings.get("ATTNLM_HOST") in ("0.0.0.0", "::"), "ATTNLM_HOST listens on every interface")

    # ---- sessions: the shared store and the secret ----------------------------------------
    store = settings.get("ATTNLM_SESSION_STORE", "")
    m = re.match(r"redis://([^:/]+):(\d+)(/\d+)?$", store)
    rports = [p["port"] for p in rsvc["spec"]["ports"]]
    report(m is not None and m.group(1) == rsvc["metadata"]["name"] and int(m.group(2)) in rports,
           "ATTNLM_SESSION_STORE %s is the Service %s on its port %s" % (store, rsvc["metadata"]["name"], rports))
    rlabels = rdep["spec"]["template"]["metadata"]["labels"]
    report(all(rlabels.get(k) == v for k, v in rsvc["spec"]["selector"].items()),
           "the Redis Service selects the Redis pods")
    rargs = " ".join(rdep["spec"]["template"]["spec"]["containers"][0].get("args", []))
    report("--maxmemory " in rargs and "--maxmemory-policy noeviction" in rargs,
           "Redis is bounded (maxmemory) and refuses rather than evicts (noeviction)")
    secret_path = settings.get("ATTNLM_SESSION_SECRET_FILE", "")
    mounts = {vm["mountPath"]: vm["name"] for vm in ctr.get("volumeMounts", [])}
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    mount = mounts.get(os.path.dirname(secret_path))
    report(bool(secret_path) and mount is not None and "secret" in vols.get(mount, {}),
           "ATTNLM_SESSION_SECRET_FILE %s is in a mounted Secret" % secret_path)

    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".secret", delete=False) as f:
        f.write("a stand-in secret for the check, long enough\n")
    env = {k: v for k, v in settings.items() if k != "ATTNLM_MODEL"}
    if secret_path:
        env["ATTNLM_SESSION_SECRET_FILE"] = f.name
    try:
        statuses, rc, log = run_server(binary, env)
    finally:
        os.unlink(f.name)
    report(statuses == {"/ready": 200, "/health": 200} and rc == 0,
           "the server starts with the ConfigMap's settings, answers /ready and /health with 200, exits 0 "
           "(got %s, exit %s)%s" % (statuses, rc, "" if rc == 0 and statuses else "\n" + log[-600:]))

    # ---- ports and probes ----------------------------------------------------------------
    port = int(settings.get("ATTNLM_PORT", flags["ATTNLM_PORT"]))
    admin = int(settings.get("ATTNLM_ADMIN_PORT", "-1"))
    cports = {p.get("name"): p["containerPort"] for p in ctr["ports"]}
    report(sorted(cports.values()) == sorted([port, admin]),
           "containerPorts %s are ATTNLM_PORT %d and ATTNLM_ADMIN_PORT %d" % (list(cports.values()), port, admin))

    def probe_port(p):
        return cports.get(p) if isinstance(p, str) else p

    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
        get = ctr.get(probe, {}).get("httpGet", {})
        report(get.get("path") == path and probe_port(get.get("port")) == admin,
               "%s GET %s on the admin port %s" % (probe, get.get("path"), get.get("port")))
    if "startupProbe" in ctr:
        get = ctr["startupProbe"].get("httpGet", {})
        report(get.get("path") in ("/health", "/ready") and probe_port(get.get("port")) == admin,
               "startupProbe GET %s on the admin port" % get.get("path"))
    target = svc["spec"]["ports"][0]["targetPort"]
    report(probe_port(target) == port, "Service targetPort %s reaches the container" % target)

    # ---- selectors ---------------------------------------------------------------------------
    labels = dep["spec"]["template"]["metadata"]["labels"]
    matches = lambda sel: bool(sel) and all(labels.get(k) == v for k, v in sel.items())
    report(matches(dep["spec"]["selector"]["matchLabels"]), "the Deployment's selector matches its pods")
    report(matches(svc["spec"]["selector"]), "the Service selects the pods")
    report(matches(pdb["spec"]["selector"]["matchLabels"]), "the PodDisruptionBudget selects the pods")
    tgt = hpa["spec"]["scaleTargetRef"]
    report(tgt["kind"] == "Deployment" and tgt["name"] == dep["metadata"]["name"], "the HPA scales the Deployment")
    report(hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"],
           "the HPA keeps at least 2 replicas")

    # ---- termination -------------------------------------------------------------------------
    grace = pod.get("terminationGracePeriodSeconds", 30)
    cmd = ctr.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pause = float(cmd[1]) if len(cmd) == 2 and cmd[0] == "sleep" else None
    drain = float(settings.get("ATTNLM_DRAIN_TIMEOUT", flags["ATTNLM_DRAIN_TIMEOUT"]))
    report(pause is not None, "preStop pauses (%s)" % cmd)
    report(pause is not None and grace > pause + drain,
           "terminationGracePeriodSeconds %s > preStop %s s + drain %s s" % (grace, pause, drain))

    # ---- security and resources ----------------------------------------------------------
    psc, csc = pod.get("securityContext", {}), ctr.get("securityContext", {})
    report(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, "runs as a non-root user")
    report(csc.get("readOnlyRootFilesystem") is True, "read-only root filesystem")
    report(csc.get("allowPrivilegeEscalation") is False, "no privilege escalation")
    report("ALL" in csc.get("capabilities", {}).get("drop", []), "all capabilities dropped")
    res = ctr.get("resources", {})
    have = all(k in res.get(w, {}) for w in ("requests", "limits") for k in ("cpu", "memory"))
    report(have, "CPU and memory requests and limits")
    if have:
        workers = int(settings.get("ATTNLM_WORKERS", "1"))
        limit = cpu_cores(res["limits"]["cpu"])
        report(workers <= limit, "ATTNLM_WORKERS %d within the CPU limit %g" % (workers, limit))

    # ---- compose ---------------------------------------------------------------------------
    with open(os.path.join(ROOT, "deploy", "docker-compose.yml")) as f:
        compose = yaml.safe_load(f)
    app = compose["services"]["attnlm"]
    unknown = sorted(n for n in app.get("environment", {}) if n not in flags)
    report(not unknown, "docker-compose.yml: every ATTNLM_* name is read by the server%s"
           % (": unknown %s" % unknown if unknown else ""))
    report(app.get("healthcheck", {}).get("test") == ["CMD", "attnlm-server", "--health"],
           "docker-compose.yml: health check by attnlm-server --health")
    with open(os.path.join(ROOT, "deploy", "nginx.conf")) as f:
        conf = f.read()
    report(re.search(r"server attnlm:%s\b" % app["environment"].get("ATTNLM_PORT", 8080), conf) is not None,
           "nginx.conf's upstream is the compose service on its port")
    report(re.search(r"location = /metrics \{\s*return 404;", conf) is not None,
           "nginx.conf does not publish /metrics")
    report("ATTNLM_ADMIN_PORT" in app.get("environment", {}), "docker-compose.yml: an admin port for the health check")
    cstore = app.get("environment", {}).get("ATTNLM_SESSION_STORE", "")
    m = re.match(r"redis://([^:/]+):\d+", cstore)
    report(m is not None and m.group(1) in compose["services"],
           "docker-compose.yml: the session store %s is a service of the file" % cstore)
    csecret = app.get("environment", {}).get("ATTNLM_SESSION_SECRET_FILE", "")
    report(csecret.startswith("/run/secrets/") and os.path.basename(csecret) in app.get("secrets", [])
           and os.path.basename(csecret) in compose.get("secrets", {}),
           "docker-compose.yml: the session secret is a compose secret")

    print("%s: %d failed" % ("manifests", failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
