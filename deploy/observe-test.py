#!/usr/bin/env python3
"""make observe-test: the dashboard and the alert rules against a real Prometheus.

    python3 deploy/observe-test.py SERVER_BINARY

Starts attnlm-server (two models, an admin port) and Debian's prometheus with
deploy/prometheus/prometheus.yml (the target replaced by the server's admin port, scraping every
second, the rules of deploy/prometheus/alerts.yml loaded), drives mixed load (scoring with
repeated openings, generation plain and streamed, OpenAI completions, sessions, a resumed stream,
refused requests, a model reload), and while the load runs evaluates every query of
deploy/grafana/attnlm.json through Prometheus's HTTP API, with $__rate_interval as 1m, $job as
attnlm and $model as .*: each must answer without error, with at least one series, and with a
number in it.  The template variables' label_values must list the job and both models, and
Prometheus must have loaded every alert rule healthy.  Then `promtool check rules` and
`promtool test rules` on the rules and their unit tests.
"""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
from attnlm_server import Server  # noqa: E402

DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "attnlm.json")
PROM_DIR = os.path.join(ROOT, "deploy", "prometheus")
OTHER = os.path.join(ROOT, "tests", "fixtures", "gru_dot.safetensors")
failures = []


def report(ok, what):
    print("%s %s" % ("ok  " if ok else "FAIL", what))
    if not ok:
        failures.append(what)
    return ok


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prom_get(port, path, **params):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("GET", path + ("?" + urllib.parse.urlencode(params, doseq=True) if params else ""))
        r = c.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    finally:
        c.close()


def dashboard_queries(dash):
    """(panel title, expression) of every target of every panel."""
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    return out


def load(srv, stop):
    """Mixed traffic until stop is set."""
    opening = "Call me Ishmael. Some years ago - never mind how long precisely - having little or no money " * 2
    n = 0
    while not stop.is_set():
        n += 1
        srv.post("/v1/score", {"text": opening + str(n)})
        srv.post("/v1/score", {"text": "whale", "model": "fixture gru_dot"})
        srv.post("/v1/generate", {"prompt": "The sea", "max_tokens": 24, "seed": n})
        srv.request("POST", "/v1/generate", {"prompt": "The whale", "max_tokens": 24, "seed": n, "stream": True})
        srv.post("/v1/completions", {"prompt": "It was", "max_tokens": 12, "n": 2, "seed": n})
        srv.post("/v1/score", {"text": 5})                   # 400
        srv.request("GET", "/v1/nothing-here")              # 404
        if n % 5 == 1:
            sid = srv.post("/v1/sessions", {"text": "Call me"})[1].get("id")
            if sid:
                srv.post("/v1/sessions/%s/append" % sid, {"text": " Ishmael."})
            body = {"prompt": "Whale", "max_tokens": 40, "seed": n, "stream": True}
            _, _, payload = srv.request("POST", "/v1/generate", body)
            ids = re.findall(rb"id: ([0-9a-f]+\.\d+)\n", payload)
            if len(ids) > 20:
                srv.request("POST", "/v1/generate", body, headers={"Last-Event-ID": ids[10].decode()})


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    binary = os.path.abspath(sys.argv[1])
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not report(prometheus and promtool, "Debian's prometheus and promtool are installed"):
        return 1
    version = subprocess.run([prometheus, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    print(version)
    work = tempfile.mkdtemp(prefix="attnlm-observe-")
    srv = prom = None
    stop = threading.Event()
    try:
        srv = Server("--workers", "2", "--admin-port", "0", "--model", OTHER, binary=binary, startup_timeout=30)
        # ---- Prometheus, with the shipped configuration and rules -----------------------------
        with open(os.path.join(PROM_DIR, "prometheus.yml")) as f:
            conf = f.read()
        conf, n = re.subn(r'\["attnlm:9090"\]  # @targets', '["127.0.0.1:%d"]' % srv.admin_port, conf)
        report(n == 1, "prometheus.yml has the marked target line")
        conf = conf.replace("scrape_interval: 15s", "scrape_interval: 1s").replace("evaluation_interval: 15s",
                                                                                   "evaluation_interval: 1s")
        shutil.copy(os.path.join(PROM_DIR, "alerts.yml"), os.path.join(work, "alerts.yml"))
        with open(os.path.join(work, "prometheus.yml"), "w") as f:
            f.write(conf)
        port = free_port()
        prom = subprocess.Popen([prometheus, "--config.file", os.path.join(work, "prometheus.yml"),
                                 "--storage.tsdb.path", os.path.join(work, "data"),
                                 "--web.listen-address", "127.0.0.1:%d" % port, "--log.level", "warn"],
                                stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "prometheus.log"), "w"))
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                st, obj = prom_get(port, "/api/v1/query", query='up{job="attnlm"}')
                if st == 200 and obj["data"]["result"] and obj["data"]["result"][0]["value"][1] == "1":
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        else:
            report(False, "Prometheus scrapes the server (up == 1)")
            return 1
        report(True, "Prometheus on 127.0.0.1:%d scrapes the server's admin port every second" % port)

        # ---- load, then every dashboard query while it goes on ---------------------------
        worker = threading.Thread(target=load, args=(srv, stop))
        worker.start()
        time.sleep(4)
        os.kill(srv.proc.pid, signal.SIGHUP)  # a model reload, for the reloads panel
        time.sleep(8)
        with open(DASHBOARD) as f:
            dash = json.load(f)
        queries = dashboard_queries(dash)
        report(len(queries) >= 20, "the dashboard has %d queries in %d panels" % (len(queries), len(dash["panels"])))
        for title, expr in queries:
            q = expr.replace("$__rate_interval", "1m").replace('"$job"', '"attnlm"').replace('"$model"', '".*"')
            st, obj = prom_get(port, "/api/v1/query", query=q)
            result = obj.get("data", {}).get("result", []) if st == 200 else []
            numbers = [float(r["value"][1]) for r in result]
            finite = [x for x in numbers if x == x and abs(x) != float("inf")]
            report(st == 200 and obj.get("status") == "success" and result and finite,
                   "%s: %s -> %s" % (title, q[:110], (obj.get("error") or ("%d series, e.g. %g" % (
                       len(result), finite[0]) if finite else "no number")) if st == 200 else st))
        for var in dash["templating"]["list"]:
            m = re.match(r"label_values\((\w+), (\w+)\)", var.get("definition", ""))
            if not m:
                continue
            st, obj = prom_get(port, "/api/v1/series", **{"match[]": m.group(1)})
            values = sorted({s.get(m.group(2)) for s in obj.get("data", [])} - {None})
            want = {"job": ["attnlm"], "model": sorted(srv.json("GET", "/v1/models")[1]["data"][i]["id"]
                                                       for i in range(2))}[var["name"]]
            report(values == want, "template variable $%s: %s" % (var["name"], values))
        st, obj = prom_get(port, "/api/v1/rules")
        rules = [r for g in obj["data"]["groups"] for r in g["rules"]]
        report(len(rules) == 8 and all(r.get("health") == "ok" for r in rules),
               "Prometheus loaded %d alert rules, all healthy" % len(rules))
        stop.set()
        worker.join(60)
    finally:
        stop.set()
        if prom:
            prom.terminate()
            try:
                prom.wait(20)
            except subprocess.TimeoutExpired:
                prom.kill()
        if srv:
            rc = srv.stop()
            report(rc == 0, "the server exited 0 after SIGTERM")
        shutil.rmtree(work, ignore_errors=True)

    # ---- the rules' own checks -------------------------------------------------------------
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]):
        r = subprocess.run([promtool] + args, cwd=PROM_DIR, capture_output=True, text=True)
        report(r.returncode == 0, "promtool %s%s" % (" ".join(args), "" if r.returncode == 0 else "\n" + r.stdout +
                                                     r.stderr))
    print("observe-test: %d failed" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
