//! The shared tier against real servers: memcached (three, spread by consistent
//! hashing), Redis (two standalone) and a Redis Cluster of three masters, started here
//! on loopback ports (`scripts/prereqs --tests` installs them). Engines with caches of
//! their own over one origin stand for machines: the second reads what the first
//! fetched from the servers, byte for byte; damaged, misplaced and unauthenticated
//! values are misses; a killed or frozen server turns into misses at origin speed;
//! an origin change is never answered with the old version; simultaneous misses of
//! the same blocks go to the origin once.

mod common;
#[path = "common/servers.rs"]
mod servers;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use servers::*;
use strata::origin::{LocalOrigin, Origin, SlowOrigin};
use strata::{Engine, SharedConfig};

/// A machine: an engine with a cache directory of its own over the shared origin.
fn machine(
    origin: &Arc<dyn Origin>,
    urls: &[String],
    secret: Option<&[u8]>,
) -> (Engine, tempfile::TempDir) {
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = config(cache.path(), Duration::from_secs(3600));
    let mut sc = SharedConfig::new(urls.to_vec(), "test-origin".into());
    sc.secret = secret.map(<[u8]>::to_vec);
    cfg.shared = Some(sc);
    (Engine::new(cfg, origin.clone()).unwrap(), cache)
}

const FILES: usize = 12;
const LEN: usize = 300_000;

fn dataset(s: &Setup) {
    for i in 0..FILES {
        std::fs::write(
            s.origin.join(format!("f{i}")),
            pattern(i as u64, LEN + i * 1000),
        )
        .unwrap();
    }
}

fn read_everything(e: &Engine, s: &Setup) {
    for i in 0..FILES {
        let want = std::fs::read(s.origin.join(format!("f{i}"))).unwrap();
        let got = read_all(e, &format!("f{i}"));
        assert!(got == want, "f{i}: the bytes differ from the origin's");
    }
}

fn local_origin(s: &Setup) -> Arc<dyn Origin> {
    Arc::new(LocalOrigin::new(&s.origin).unwrap())
}

/// A dataset at a new origin, read whole by a first machine whose puts are all sent.
fn first_machine(
    servers: &Servers,
    secret: Option<&[u8]>,
) -> (Setup, Arc<dyn Origin>, Engine, tempfile::TempDir) {
    let s = setup();
    dataset(&s);
    let origin = local_origin(&s);
    let (a, ca) = machine(&origin, &servers.urls, secret);
    read_everything(&a, &s);
    a.settle();
    (s, origin, a, ca)
}

/// The second machine reads the whole dataset from the shared tier.
fn second_machine_reads_from_the_servers(servers: &Servers) {
    let (s, origin, a, _ca) = first_machine(servers, None);
    let sa = a.stats();
    assert!(sa.shared_puts > 0, "{sa:?}");
    let (b, _cb) = machine(&origin, &servers.urls, None);
    read_everything(&b, &s);
    let sb = b.stats();
    assert_eq!(sb.origin_bytes, 0, "{sb:?}");
    assert!(
        sb.shared_hits > 0 && sb.shared_verify_failures == 0,
        "{sb:?}"
    );
    // And again, now from its own tiers (once its fills are on disk: its RAM is
    // smaller than the dataset).
    // Read-ahead may still be at work after the reads return.
    let mut last = u64::MAX;
    wait_for(Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(100));
        let now = b.stats().shared_hits;
        std::mem::replace(&mut last, now) == now
    });
    assert!(b.wait_fills(Duration::from_secs(20)));
    let before = b.stats();
    read_everything(&b, &s);
    let after = b.stats();
    assert_eq!(
        after.shared_hits, before.shared_hits,
        "{before:?}\n{after:?}"
    );
}

#[test]
fn memcached_pool_serves_a_second_machine() {
    second_machine_reads_from_the_servers(&memcached(3));
}

#[test]
fn redis_servers_serve_a_second_machine() {
    second_machine_reads_from_the_servers(&redis(2));
}

#[test]
fn redis_cluster_serves_a_second_machine() {
    second_machine_reads_from_the_servers(&redis_cluster());
}

/// Every key memcached on `port` holds.
fn memcached_keys(port: u16) -> Vec<String> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(b"lru_crawler metadump all\r\n").unwrap();
    let mut keys = Vec::new();
    for line in BufReader::new(c).lines() {
        let line = line.unwrap();
        if line == "END" {
            break;
        }
        if let Some(k) = line.strip_prefix("key=") {
            // URL-encoded.
            keys.push(k.split(' ').next().unwrap().replace("%3A", ":"));
        }
    }
    keys
}

#[test]
fn damaged_and_misplaced_values_are_misses() {
    let servers = memcached(1);
    let (s, origin, _a, _ca) = first_machine(&servers, None);
    let mc =
        memcache::Client::connect(format!("memcache://127.0.0.1:{}", servers.ports[0])).unwrap();
    let mut keys = memcached_keys(servers.ports[0]);
    keys.retain(|k| k.starts_with("strata1:") && !k.ends_with(":lease"));
    keys.sort();
    assert!(keys.len() > 10, "{keys:?}");
    // One value with a bit flipped, one stored under another block's key.
    let mut v: Vec<u8> = mc.get(&keys[0]).unwrap().unwrap();
    let n = v.len();
    v[n - 7] ^= 1;
    mc.set(&keys[0], &v[..], 0).unwrap();
    let other: Vec<u8> = mc.get(&keys[2]).unwrap().unwrap();
    mc.set(&keys[1], &other[..], 0).unwrap();

    let (b, _cb) = machine(&origin, &servers.urls, None);
    read_everything(&b, &s);
    let sb = b.stats();
    assert_eq!(sb.shared_verify_failures, 2, "{sb:?}");
    assert!(
        sb.origin_bytes > 0 && sb.origin_bytes < 4 * BS as u64,
        "{sb:?}"
    );
    // The damaged value is gone from the server (dropped, then put right by b).
    b.settle();
    assert!(mc.get::<Vec<u8>>(&keys[0]).unwrap() != Some(v));
}

#[test]
fn with_a_secret_only_its_holders_values_are_taken() {
    let servers = redis(1);
    let (s, origin, _a, _ca) = first_machine(&servers, Some(b"fleet secret"));
    // A machine with another secret (or none of its values) takes nothing.
    let (b, _cb) = machine(&origin, &servers.urls, Some(b"another secret"));
    read_everything(&b, &s);
    let sb = b.stats();
    assert_eq!(sb.shared_hits, 0, "{sb:?}");
    assert!(sb.shared_verify_failures > 0, "{sb:?}");
    b.settle();
    // One with the secret takes what a holder put (b's values, under b's secret,
    // replaced some: those are misses, re-fetched).
    let (c, _cc) = machine(&origin, &servers.urls, Some(b"fleet secret"));
    read_everything(&c, &s);
    assert!(c.stats().shared_verify_failures > 0);
}

#[test]
fn an_origin_change_is_never_answered_from_the_shared_tier() {
    let servers = memcached(2);
    let (s, origin, _a, _ca) = first_machine(&servers, None);
    // Same size, new bytes, a new mtime: a new version, so new keys.
    let p = s.origin.join("f3");
    let mut new = std::fs::read(&p).unwrap();
    for b in new.iter_mut().take(50_000) {
        *b = !*b;
    }
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&p, &new).unwrap();
    let (b, _cb) = machine(&origin, &servers.urls, None);
    assert!(read_all(&b, "f3") == new);
    read_everything(&b, &s);
}

#[test]
fn a_killed_and_a_frozen_server_turn_into_misses_not_failures() {
    let mut servers = memcached(3);
    let (s, origin, _a, _ca) = first_machine(&servers, None);
    servers.procs[0].kill().unwrap();
    servers.procs[0].wait().unwrap();
    let frozen = servers.procs[1].id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &frozen])
            .status()
            .unwrap()
            .success()
    );
    let (b, _cb) = machine(&origin, &servers.urls, None);
    let t = Instant::now();
    read_everything(&b, &s);
    let took = t.elapsed();
    let sb = b.stats();
    eprintln!(
        "one server killed, one frozen: {took:?}, {} hits, {} timeouts, {} errors",
        sb.shared_hits, sb.shared_timeouts, sb.shared_errors
    );
    assert!(sb.shared_hits > 0, "the live server still serves: {sb:?}");
    assert!(sb.shared_timeouts + sb.shared_errors > 0, "{sb:?}");
    assert!(sb.origin_bytes > 0, "{sb:?}");
    // A handful of 50 ms timeouts before the breakers open, not one per block.
    assert!(took < Duration::from_secs(5), "{took:?} {sb:?}");
    assert!(
        Command::new("kill")
            .args(["-CONT", &frozen])
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn simultaneous_misses_of_the_same_blocks_go_to_the_origin_once() {
    let servers = memcached(3);
    let s = setup();
    std::fs::write(s.origin.join("big"), pattern(9, 4 << 20)).unwrap();
    let slow: Arc<dyn Origin> = Arc::new(SlowOrigin::new(
        local_origin(&s),
        Duration::from_millis(20),
        0,
    ));
    let machines: Vec<_> = (0..4)
        .map(|_| machine(&slow, &servers.urls, None))
        .collect();
    let want = std::fs::read(s.origin.join("big")).unwrap();
    std::thread::scope(|sc| {
        for (e, _) in &machines {
            let want = &want;
            sc.spawn(move || assert!(read_all(e, "big") == *want));
        }
    });
    let fetched: u64 = machines.iter().map(|(e, _)| e.stats().origin_bytes).sum();
    let waits: u64 = machines
        .iter()
        .map(|(e, _)| e.stats().shared_lease_hits)
        .sum();
    eprintln!(
        "4 machines at once: {fetched} origin bytes for a {} byte file, {waits} fetches answered by another's put",
        want.len()
    );
    assert!(waits > 0);
    assert!(
        fetched < want.len() as u64 * 3 / 2,
        "4 machines fetched {fetched} bytes of a {} byte file",
        want.len()
    );
}
