//! Real memcached and Redis servers on loopback ports for tests (installed by
//! `scripts/prereqs --tests`), killed when dropped. Shared by the engine's tests and
//! the mount tests (`#[path]`).

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Server processes, killed when dropped.
pub struct Servers {
    pub procs: Vec<Child>,
    pub urls: Vec<String>,
    pub ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl Servers {
    fn none() -> Self {
        Servers {
            procs: Vec::new(),
            urls: Vec::new(),
            ports: Vec::new(),
            _dir: tempfile::tempdir().unwrap(),
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = Command::new("kill")
                .args(["-CONT", &p.id().to_string()])
                .status();
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_port(port: u16) {
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "server on {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn need(bin: &str) -> String {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin"] {
        let p = format!("{dir}/{bin}");
        if Path::new(&p).exists() {
            return p;
        }
    }
    panic!("{bin} is not installed: run scripts/prereqs --tests");
}

pub fn memcached(n: usize) -> Servers {
    let bin = need("memcached");
    let mut s = Servers::none();
    for _ in 0..n {
        let port = free_port();
        let child = Command::new(&bin)
            .args([
                "-u",
                "root",
                "-l",
                "127.0.0.1",
                "-U",
                "0",
                "-m",
                "1024",
                "-I",
                "2m",
                // A fleet of engines in one process opens many connections.
                "-c",
                "16384",
            ])
            .args(["-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        s.procs.push(child);
        wait_port(port);
        s.urls.push(format!("memcached://127.0.0.1:{port}"));
        s.ports.push(port);
    }
    s
}

pub fn redis_server(dir: &Path, port: u16, cluster: bool) -> Child {
    let mut c = Command::new(need("redis-server"));
    c.current_dir(dir)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .args(["--maxmemory", "1gb", "--maxmemory-policy", "allkeys-lru"])
        .args(["--maxclients", "16384"]);
    if cluster {
        c.args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--cluster-node-timeout", "1000"]);
    }
    c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

pub fn redis(n: usize) -> Servers {
    let mut s = Servers::none();
    for _ in 0..n {
        let port = free_port();
        s.procs.push(redis_server(s._dir.path(), port, false));
        wait_port(port);
        s.urls.push(format!("redis://127.0.0.1:{port}"));
        s.ports.push(port);
    }
    s
}

/// Three masters, each with a replica that takes over within about two seconds of
/// its master's death. The masters are `procs[0..3]`.
pub fn redis_cluster() -> Servers {
    let mut s = Servers::none();
    for _ in 0..6 {
        let port = free_port();
        s.procs.push(redis_server(s._dir.path(), port, true));
        wait_port(port);
        s.ports.push(port);
    }
    let nodes: Vec<String> = s.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let out = Command::new(need("redis-cli"))
        .args(["--cluster", "create"])
        .args(&nodes)
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Every node agrees the slots are covered.
    let t = Instant::now();
    loop {
        let info = Command::new(need("redis-cli"))
            .args(["-p", &s.ports[0].to_string(), "cluster", "info"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "cluster did not form"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    s.urls = nodes
        .iter()
        .map(|n| format!("redis+cluster://{n}"))
        .collect();
    s
}
