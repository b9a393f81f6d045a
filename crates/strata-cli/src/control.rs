//! The control socket: CACHE_DIR/control.sock (mode 0600, in a 0700 directory). One
//! command per connection, one line each way:
//!
//! - `stats`    → one line of JSON: `{"origin", "mountpoint", "cache_dir", ..., "stats": {...}}`
//! - `shutdown` → unmounts, finishes fills, commits the index, then answers `ok`
//! - `pin HEX`  → pins the origin path HEX (hex of its bytes, relative, empty for
//!   all): lines `progress FILES_DONE FILES BYTES_DONE BYTES`, then `ok FILES BYTES`
//!   or `error MESSAGE`
//! - `unpin HEX` → `ok`, `none` (no such pin) or `error MESSAGE`
//! - `pins`     → one line of JSON: `[{"path": ..., "bytes": ...}]`
//!
//! Clients find the socket of a mount through the extended attribute
//! [`strata_fuse::CONTROL_XATTR`] of the mount's root.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strata::Engine;
use strata::stats::{StatsSnapshot, TierRow};
use strata::storage::{RealStorage, Storage};

use crate::mount::{Plan, Shutdown};

/// What `stats` answers. Field names are stable (documented in the README).
#[derive(Serialize, Deserialize, Debug)]
pub struct StatsReply {
    pub origin: String,
    pub mountpoint: String,
    pub cache_dir: String,
    pub block_size: u64,
    pub ram_capacity: u64,
    /// The compressed RAM tier's size; 0: none.
    #[serde(default)]
    pub compressed_ram_capacity: u64,
    pub disk_capacity: u64,
    pub attr_ttl_ms: u64,
    /// The longest adaptive trust; 0 when trust is fixed at `attr_ttl_ms`.
    #[serde(default)]
    pub attr_ttl_max_ms: u64,
    /// The most memory the daemon uses, as the README states it (`memory_bound`).
    #[serde(default)]
    pub memory_bound: u64,
    /// The shared tier's servers; empty: none.
    #[serde(default)]
    pub shared_cache: Vec<String>,
    pub stats: StatsSnapshot,
    /// One row per tier, fastest first (from `stats`).
    #[serde(default)]
    pub tiers: Vec<TierRow>,
}

/// What the daemon's memory stays within: the engine's part (`Config::memory_bound`),
/// and for each thread that serves FUSE requests a reply being put together and the
/// blocks it came from (a read of at most `MAX_READ`), plus a fixed part for the code,
/// thread stacks and the allocator's slack.
pub fn memory_bound(plan: &Plan, request_threads: usize) -> u64 {
    const FIXED: u64 = 24 << 20;
    plan.config.memory_bound() + request_threads as u64 * 2 * strata_fuse::MAX_READ as u64 + FIXED
}

/// The socket's name in the cache directory.
pub const SOCKET: &str = "control.sock";

/// Binds the control socket in the cache directory, reached through its checked
/// descriptor (`path` is the name shown to users).
pub fn bind(cache: &RealStorage, path: &Path) -> Result<UnixListener, String> {
    // A socket left by a daemon that died; the cache directory lock (taken when the
    // engine started) proves nobody serves it.
    let _ = cache.remove_file(Path::new(SOCKET));
    let at = cache.fd_path(SOCKET);
    let l = UnixListener::bind(&at)
        .map_err(|e| format!("cannot create control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict control socket {}: {e}", path.display()))?;
    Ok(l)
}

pub fn serve(
    listener: UnixListener,
    engine: Arc<Engine>,
    shutdown: Arc<Shutdown>,
    plan: &Plan,
    request_threads: usize,
) {
    let info = StatsReply {
        origin: plan.origin.to_string_lossy().into_owned(),
        mountpoint: plan.mountpoint.to_string_lossy().into_owned(),
        cache_dir: plan.cache_dir.to_string_lossy().into_owned(),
        block_size: plan.config.block_size as u64,
        ram_capacity: plan.config.ram_capacity,
        compressed_ram_capacity: plan.config.compressed_ram_capacity,
        disk_capacity: plan.config.disk.as_ref().map_or(0, |d| d.capacity),
        attr_ttl_ms: plan.config.attr_ttl.as_millis() as u64,
        attr_ttl_max_ms: plan.config.attr_ttl_max.map_or(0, |d| d.as_millis() as u64),
        memory_bound: memory_bound(plan, request_threads),
        shared_cache: plan
            .config
            .shared
            .as_ref()
            .map_or(Vec::new(), |s| s.urls.clone()),
        stats: StatsSnapshot::default(),
        tiers: Vec::new(),
    };
    let spawned = std::thread::Builder::new()
        .name("strata-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let mut line = String::new();
                let mut r = BufReader::new(&conn);
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                let mut w = &conn;
                match line.trim() {
                    "stats" => {
                        let stats = engine.stats();
                        let reply = StatsReply {
                            tiers: stats.tiers(
                                info.compressed_ram_capacity > 0,
                                !info.shared_cache.is_empty(),
                            ),
                            stats,
                            origin: info.origin.clone(),
                            mountpoint: info.mountpoint.clone(),
                            cache_dir: info.cache_dir.clone(),
                            shared_cache: info.shared_cache.clone(),
                            ..info
                        };
                        let _ =
                            writeln!(w, "{}", serde_json::to_string(&reply).unwrap_or_default());
                    }
                    l if l.starts_with("pin ") || l == "pin" => {
                        // Long: on its own thread, so stats and umount still answer.
                        let (engine, rel) = (engine.clone(), unhex(l[3..].trim()));
                        let spawned = std::thread::Builder::new()
                            .name("strata-pin".into())
                            .spawn(move || pin(&engine, rel, &conn));
                        if let Err(e) = spawned {
                            tracing::warn!(error = %e, "cannot start a pin");
                        }
                    }
                    l if l.starts_with("unpin ") || l == "unpin" => {
                        let answer = match unhex(l[5..].trim()) {
                            Some(rel) => match engine.unpin(&rel) {
                                Ok(true) => "ok".to_string(),
                                Ok(false) => "none".to_string(),
                                Err(e) => format!("error {e}"),
                            },
                            None => "error bad path".to_string(),
                        };
                        let _ = writeln!(w, "{answer}");
                    }
                    "pins" => {
                        let list: Vec<serde_json::Value> = engine
                            .pins()
                            .into_iter()
                            .map(|(p, bytes)| {
                                serde_json::json!({
                                    "path": format!("/{}", p.to_string_lossy()),
                                    "bytes": bytes
                                })
                            })
                            .collect();
                        let _ = writeln!(w, "{}", serde_json::Value::Array(list));
                    }
                    "shutdown" => match conn.try_clone() {
                        // Registered before unmounting: the session may end (and the
                        // process exit) right after the unmount.
                        Ok(c) => {
                            if !shutdown.unmount_and_answer(c) {
                                let _ = writeln!(w, "busy");
                            }
                        }
                        Err(e) => {
                            let _ = writeln!(w, "error {e}");
                        }
                    },
                    other => {
                        let _ = writeln!(w, "error unknown command {other:?}");
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the control thread; strata stats will not work");
    }
}

/// Runs a pin for a client, telling it how far it got.
fn pin(engine: &Engine, rel: Option<PathBuf>, conn: &UnixStream) {
    let mut w = conn;
    let Some(rel) = rel else {
        let _ = writeln!(w, "error bad path");
        return;
    };
    let mut last = std::time::Instant::now() - Duration::from_secs(1);
    let r = engine.pin(&rel, &mut |p| {
        // A few lines a second are enough for a progress bar.
        if last.elapsed() >= Duration::from_millis(100) || p.files_done == p.files_total {
            last = std::time::Instant::now();
            let _ = writeln!(
                w,
                "progress {} {} {} {}",
                p.files_done, p.files_total, p.bytes_done, p.bytes_total
            );
        }
    });
    let _ = match r {
        Ok(p) => writeln!(w, "ok {} {}", p.files_total, p.bytes_total),
        Err(e) => writeln!(w, "error {}", e.to_string().replace('\n', " ")),
    };
}

/// Bytes as hex, so that any path travels on one line.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    if s.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    let p = PathBuf::from(std::ffi::OsString::from_vec(bytes?));
    // Relative and plain: the engine refuses anything else too.
    p.components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
        .then_some(p)
}

/// Sends one command and hands each line of the answer to `line` until it returns
/// false or the daemon closes the connection.
pub fn request_lines(
    mountpoint: &Path,
    cmd: &str,
    mut line: impl FnMut(&str) -> bool,
) -> Result<(), String> {
    let sock = socket_of(mountpoint)?;
    let mut s = UnixStream::connect(&sock)
        .map_err(|e| format!("cannot connect to {}: {e}", sock.display()))?;
    writeln!(s, "{cmd}").map_err(|e| format!("control socket: {e}"))?;
    for l in BufReader::new(&s).lines() {
        let l = l.map_err(|e| format!("control socket: {e}"))?;
        if !line(&l) {
            break;
        }
    }
    Ok(())
}

/// The control socket of the strata mount at `mountpoint`.
pub fn socket_of(mountpoint: &Path) -> Result<PathBuf, String> {
    let mut buf = vec![0u8; 4096];
    match rustix::fs::getxattr(mountpoint, strata_fuse::CONTROL_XATTR, &mut buf[..]) {
        Ok(n) => {
            buf.truncate(n);
            Ok(PathBuf::from(String::from_utf8_lossy(&buf).into_owned()))
        }
        Err(e) => Err(format!(
            "{} is not a live strata mount (cannot reach its daemon: {e})",
            mountpoint.display()
        )),
    }
}

/// Sends one command and returns the one-line answer.
pub fn request(mountpoint: &Path, cmd: &str, timeout: Duration) -> Result<String, String> {
    let sock = socket_of(mountpoint)?;
    let mut s = UnixStream::connect(&sock)
        .map_err(|e| format!("cannot connect to {}: {e}", sock.display()))?;
    s.set_read_timeout(Some(timeout)).ok();
    writeln!(s, "{cmd}").map_err(|e| format!("control socket: {e}"))?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| format!("control socket: {e}"))?;
    Ok(line.trim_end().to_string())
}
