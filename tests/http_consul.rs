//! Consul's own clients against a real `cairn agent --dev`: the Python client `py-consul`
//! (installed by the test into a virtualenv under the target directory, once) drives KV,
//! locks with sessions, a blocking get, transactions, the catalog, health with
//! `passing=True`, the agent API with a TTL check, sessions and status; curl checks
//! statuses and headers as a shell script would see them. Every wait is bounded; nothing
//! asserts on timing.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{free_port, CAIRN};

/// A dev agent, killed when dropped.
struct Agent {
    child: Child,
    http_port: u16,
    log: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts `cairn agent --dev` with its HTTP API on a free port and waits (bounded) until
/// its own node is in the catalog with a passing `serfHealth` (so sessions can be made).
fn dev() -> Agent {
    let http_port = free_port("127.0.0.1");
    let log = std::env::temp_dir().join(format!(
        "cairn-http-consul-{http_port}-{}.log",
        std::process::id()
    ));
    let child = Command::new(CAIRN)
        .args(["agent", "--dev", "--serf-lan-port", "0"])
        .args(["--server-port", &free_port("127.0.0.1").to_string()])
        .args(["--http-port", &http_port.to_string(), "--dns-port", "-1"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let agent = Agent {
        child,
        http_port,
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("curl")
            .args(["-s", &agent.url("/v1/health/state/passing")])
            .output()
            .expect("curl runs");
        if String::from_utf8_lossy(&out.stdout).contains("serfHealth") {
            return agent;
        }
        assert!(
            Instant::now() < deadline,
            "the dev agent never registered itself: {}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Installs curl with apt-get when it is missing.
fn ensure_curl() {
    if Command::new("curl").arg("--version").output().is_ok() {
        return;
    }
    let out = run(Command::new("apt-get").args(["install", "-y", "curl"]));
    assert!(
        out.status.success(),
        "curl is missing and apt-get could not install it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A virtualenv with `py-consul`, made once under the target directory and reused. It is
/// built in a directory of its own and renamed into place, so concurrent test runs never
/// see half an install.
fn python_with_py_consul() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("py-consul-venv");
    let python = dir.join("bin/python");
    let ready = |p: &Path| {
        Command::new(p)
            .args(["-c", "import consul"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready(&python) {
        return python;
    }
    let building = dir.with_extension(format!("building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    let mut out = run(Command::new("python3").args(["-m", "venv"]).arg(&building));
    if !out.status.success() {
        // Debian's python3 lacks ensurepip until python3-venv is installed.
        let apt = run(Command::new("apt-get").args(["install", "-y", "python3-venv"]));
        assert!(
            apt.status.success(),
            "python3 -m venv failed and python3-venv could not be installed: {}",
            String::from_utf8_lossy(&apt.stderr)
        );
        let _ = std::fs::remove_dir_all(&building);
        out = run(Command::new("python3").args(["-m", "venv"]).arg(&building));
    }
    assert!(
        out.status.success(),
        "python3 -m venv: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pip = run(Command::new(building.join("bin/pip")).args(["install", "-q", "py-consul"]));
    assert!(
        pip.status.success(),
        "pip install py-consul: {}",
        String::from_utf8_lossy(&pip.stderr)
    );
    // Another run may have finished first; either install is as good.
    if std::fs::rename(&building, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&building);
    }
    // A moved venv's python still finds its packages (pyvenv.cfg sits next to bin/).
    assert!(ready(&python), "py-consul is not importable from {dir:?}");
    python
}

/// The py-consul script: every step asserts, and it prints "ok" at the end.
const SCRIPT: &str = r#"
import base64, sys, threading, time
import consul

port, node = int(sys.argv[1]), sys.argv[2]
c = consul.Consul(host="127.0.0.1", port=port)

def until(what, f, limit=30):
    deadline = time.monotonic() + limit
    while True:
        v = f()
        if v:
            return v
        assert time.monotonic() < deadline, what
        time.sleep(0.1)

# Status. (py-consul hands X-Consul-Index back as a string.)
leader = c.status.leader()
assert leader and leader in c.status.peers(), (leader, c.status.peers())

# KV: put, get, cas, recurse, keys, delete.
assert c.kv.put("py/a", "1") is True
idx, e = c.kv.get("py/a")
assert e["Value"] == b"1" and int(idx) >= 1, (idx, e)
assert c.kv.put("py/a", "2", cas=e["ModifyIndex"]) is True
assert c.kv.put("py/a", "3", cas=e["ModifyIndex"]) is False
assert c.kv.get("py/a")[1]["Value"] == b"2"
assert c.kv.put("py/b", "x", flags=7) is True
_, es = c.kv.get("py/", recurse=True)
assert [x["Key"] for x in es] == ["py/a", "py/b"], es
assert es[1]["Flags"] == 7
_, keys = c.kv.get("py/", keys=True)
assert keys == ["py/a", "py/b"], keys
assert c.kv.delete("py/b") is True
assert c.kv.get("py/b")[1] is None
c.kv.put("py/tree/x", "1"); c.kv.put("py/tree/y", "2")
assert c.kv.delete("py/tree/", recurse=True) is True
assert c.kv.get("py/tree/", recurse=True)[1] is None

# A blocking get returns after a put (the put is repeated until the watcher saw one).
idx, _ = c.kv.get("py/a")
seen = {}
def watch():
    seen["r"] = c.kv.get("py/a", index=idx, wait="60s")
t = threading.Thread(target=watch)
t.start()
n, deadline = 0, time.monotonic() + 60
while t.is_alive():
    n += 1
    c.kv.put("py/a", "w%d" % n)
    t.join(0.2)
    assert time.monotonic() < deadline, "the blocking get never returned"
nidx, e = seen["r"]
assert int(nidx) > int(idx) and e["Value"].startswith(b"w"), (nidx, idx, e)

# A transaction.
tv = base64.b64encode(b"tv").decode()
r = c.txn.put([{"KV": {"Verb": "set", "Key": "py/t", "Value": tv}},
               {"KV": {"Verb": "get", "Key": "py/t"}}])
assert r["Results"][1]["KV"]["Value"] == tv, r

# Sessions and locks.
sid = c.session.create(name="py-lock", ttl=30)
_, info = c.session.info(sid)
assert info["Name"] == "py-lock" and info["Node"] == node and info["TTL"] == "30s", info
_, sessions = c.session.list()
assert any(s["ID"] == sid for s in sessions), sessions
_, mine = c.session.node(node)
assert any(s["ID"] == sid for s in mine), mine
other = c.session.create(name="other", lock_delay=0, behavior="delete")
assert c.kv.put("py/lock", "held", acquire=sid) is True
assert c.kv.get("py/lock")[1]["Session"] == sid
assert c.kv.put("py/lock", "stolen", acquire=other) is False
assert c.kv.put("py/lock", "free", release=sid) is True
assert "Session" not in c.kv.get("py/lock")[1]
assert c.session.renew(sid)["ID"] == sid
assert c.session.destroy(sid) is True
assert c.session.info(sid)[1] is None
assert c.session.destroy(other) is True

# The catalog.
assert c.catalog.register(
    "py-ext", "10.9.0.1",
    service={"Service": "pyredis", "ID": "pyredis1", "Tags": ["master"], "Port": 8000},
    check={"CheckID": "pyredis-alive", "Name": "alive", "Status": "passing",
           "ServiceID": "pyredis1"}) is True
_, nodes = c.catalog.nodes()
assert any(n["Node"] == "py-ext" and n["Address"] == "10.9.0.1" for n in nodes), nodes
_, services = c.catalog.services()
assert services["pyredis"] == ["master"], services
_, inst = c.catalog.service("pyredis")
assert inst[0]["ServicePort"] == 8000 and inst[0]["Address"] == "10.9.0.1", inst
assert len(c.catalog.service("pyredis", tag="master")[1]) == 1
assert c.catalog.service("pyredis", tag="slave")[1] == []
_, n = c.catalog.node("py-ext")
assert "pyredis1" in n["Services"], n
_, h = c.health.service("pyredis", passing=True)
assert len(h) == 1 and h[0]["Service"]["ID"] == "pyredis1", h
assert c.catalog.deregister("py-ext") is True
assert c.catalog.node("py-ext")[1] is None

# The agent API: a service with a TTL check; health with passing=True follows the check.
c.agent.service.register("pyweb", service_id="pyweb1", port=9000, tags=["v1"],
                         check=consul.Check.ttl("60s"))
assert c.agent.services()["pyweb1"]["Port"] == 9000
check_id = [k for k, v in c.agent.checks().items() if v["ServiceID"] == "pyweb1"][0]
c.agent.check.ttl_pass(check_id, "all good")
assert c.agent.checks()[check_id]["Status"] == "passing"
until("pyweb passing", lambda: len(c.health.service("pyweb", passing=True)[1]) == 1)
c.agent.check.ttl_fail(check_id, "broken")
until("pyweb excluded from passing=True",
      lambda: c.health.service("pyweb", passing=True)[1] == [])
assert len(c.health.service("pyweb")[1]) == 1
_, checks = c.health.checks("pyweb")
assert checks[0]["Status"] == "critical" and checks[0]["Output"] == "broken", checks
_, crit = c.health.state("critical")
assert any(x["CheckID"] == check_id for x in crit), crit
c.agent.service.deregister("pyweb1")
assert "pyweb1" not in c.agent.services()
print("ok")
"#;

#[test]
fn py_consul_drives_kv_sessions_catalog_health_agent_and_status() {
    ensure_curl();
    let python = python_with_py_consul();
    let a = dev();
    let node = {
        let out = run(Command::new("curl").args(["-s", &a.url("/v1/agent/self")]));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["Config"]["NodeName"].as_str().unwrap().to_string()
    };
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("drive.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let out = run(Command::new(&python)
        .arg(&script)
        .arg(a.http_port.to_string())
        .arg(&node));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "py-consul script failed:\n{stdout}\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        a.log_text()
    );
}

/// `curl -s -i`: the status and lower-cased header names, and the body.
fn curl(args: &[&str]) -> (u16, Vec<(String, String)>, String) {
    let out = run(Command::new("curl").args(["-s", "-i"]).args(args));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[test]
fn curl_sees_consuls_statuses_and_headers() {
    ensure_curl();
    let a = dev();
    let (status, h, body) = curl(&[&a.url("/v1/catalog/nodes")]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&h, "content-type"), Some("application/json"));
    assert!(header(&h, "x-consul-index").is_some_and(|i| i.parse::<u64>().unwrap() >= 1));
    assert_eq!(header(&h, "x-consul-knownleader"), Some("true"));
    assert!(header(&h, "x-consul-lastcontact").is_some());
    let (_, h, _) = curl(&[&a.url("/v1/health/state/any?stale")]);
    assert_eq!(header(&h, "x-consul-effective-consistency"), Some("stale"));

    let (status, _, body) = curl(&[
        "-X",
        "PUT",
        "--data",
        r#"{"Node":"c1","Address":"10.3.0.1","Service":{"Service":"curlsvc","Port":1}}"#,
        &a.url("/v1/catalog/register"),
    ]);
    assert_eq!((status, body.as_str()), (200, "true"));
    let (status, _, body) = curl(&[
        "-G",
        "--data-urlencode",
        r#"filter=ServiceName == "curlsvc" and Node != "x""#,
        &a.url("/v1/catalog/service/curlsvc"),
    ]);
    assert_eq!(status, 200);
    assert!(body.contains("\"Node\":\"c1\""), "{body}");

    for (method, path, want) in [
        ("GET", "/v1/health/state/nope", 400),
        ("GET", "/v1/catalog/node/nobody", 404),
        (
            "GET",
            "/v1/catalog/nodes?filter=Node%20matches%20%22x%22",
            400,
        ),
        ("POST", "/v1/catalog/register", 405),
        (
            "PUT",
            "/v1/session/renew/0c0c0c0c-0000-0000-0000-000000000000",
            404,
        ),
        ("PUT", "/v1/agent/maintenance", 400),
        ("GET", "/v1/agent/service/nope", 404),
        ("GET", "/v1/agent/leave", 405),
    ] {
        let (status, _, body) = curl(&["-X", method, &a.url(path)]);
        assert_eq!(status, want, "{method} {path}: {body}");
    }
    let (_, h, _) = curl(&["-X", "POST", &a.url("/v1/session/create")]);
    assert_eq!(header(&h, "allow"), Some("PUT"));
    let (status, _, body) = curl(&["-X", "PUT", &a.url("/v1/session/create")]);
    assert_eq!(status, 200);
    assert!(body.starts_with("{\"ID\":\""), "{body}");
}
