//! `strata pin` and `strata unpin`: the client side. The daemon does the work (see
//! `control`); this finds the mount a path is in and shows the progress.

use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::control;
use crate::mount;

/// The strata mount `path` is in, and `path` relative to it.
pub fn in_mount(path: &Path) -> Result<(PathBuf, PathBuf), String> {
    let abs = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let table = strata::origin::mount_table().unwrap_or_default();
    // The deepest mount above the path: a strata mount, or another filesystem
    // mounted inside one (not ours to pin).
    let deepest = abs
        .ancestors()
        .find_map(|dir| Some((dir, mount::mount_at(&table, dir)?)));
    match deepest {
        Some((dir, (_, t))) if t == mount::FS_TYPE => {
            let rel = abs.strip_prefix(dir).unwrap_or(Path::new("")).to_path_buf();
            Ok((dir.to_path_buf(), rel))
        }
        _ => Err(format!("{} is not in a strata mount", path.display())),
    }
}

pub fn pin(path: &Path) -> Result<(), String> {
    let (mnt, rel) = in_mount(path)?;
    let hex = control::hex(rel.as_os_str().as_encoded_bytes());
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .map_err(|e| e.to_string())?
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut result: Result<(), String> = Err("the daemon closed the connection".into());
    control::request_lines(&mnt, &format!("pin {hex}"), |line| {
        let mut f = line.split(' ');
        match f.next() {
            Some("progress") => {
                let n: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
                if let [done, files, bytes_done, bytes] = n[..] {
                    bar.set_length(bytes);
                    bar.set_position(bytes_done);
                    bar.set_message(format!("{done}/{files} files"));
                }
                true
            }
            Some("ok") => {
                result = Ok(());
                false
            }
            _ => {
                result = Err(line.strip_prefix("error ").unwrap_or(line).to_string());
                false
            }
        }
    })?;
    bar.finish();
    result.map_err(|e| format!("pin {}: {e}", path.display()))?;
    println!("pinned {}", path.display());
    Ok(())
}

pub fn unpin(path: &Path) -> Result<(), String> {
    let (mnt, rel) = in_mount(path)?;
    let hex = control::hex(rel.as_os_str().as_encoded_bytes());
    match control::request(&mnt, &format!("unpin {hex}"), Duration::from_secs(60))?.as_str() {
        "ok" => Ok(()),
        "none" => Err(format!("{} is not pinned", path.display())),
        other => Err(format!(
            "unpin {}: {}",
            path.display(),
            other.strip_prefix("error ").unwrap_or(other)
        )),
    }
}
