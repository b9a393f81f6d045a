//! Prefetch end to end: files read in listing order fetched ahead, subdirectories of
//! a tree walk listed ahead.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use strata::Engine;
use strata::origin::{LocalOrigin, Origin, SlowOrigin};

#[test]
fn files_read_in_listing_order_are_fetched_ahead() {
    let s = setup();
    let dir = s.origin.join("src");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for i in 0..48u64 {
        std::fs::write(
            dir.join(format!("f{i:02}")),
            pattern(i, 1000 + i as usize * 37),
        )
        .unwrap();
    }
    let local: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&s.origin).unwrap());
    let slow: Arc<dyn Origin> = Arc::new(SlowOrigin::new(local, Duration::from_millis(10), 0));
    let ttl = Duration::from_millis(300);
    let e = Engine::new(config(&s.cache, ttl), slow).unwrap();
    let list = e.read_dir(Path::new("src")).unwrap();
    let files: Vec<String> = list
        .iter()
        .filter(|d| d.kind == strata::origin::FileKind::File)
        .map(|d| d.name.to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 48);
    // One file changes after the scan began: its prefetched version is not served
    // once the TTL since it was confirmed has passed.
    let changed = &files[30];
    for (k, f) in files.iter().enumerate() {
        if k == 5 {
            std::thread::sleep(Duration::from_millis(200));
            std::fs::write(dir.join(changed), b"new content, another size").unwrap();
        }
        if k == 30 {
            std::thread::sleep(ttl);
        }
        let want = std::fs::read(dir.join(f)).unwrap();
        assert_eq!(read_all(&e, &format!("src/{f}")), want, "{f}");
    }
    let st = e.stats();
    assert!(st.dir_prefetches >= 20, "{st:?}");
    assert!(
        st.ram_hits >= 20,
        "prefetched files were served from RAM: {st:?}"
    );
    assert!(st.invalidations >= 1, "{st:?}");

    // Files opened in no particular order are not a scan.
    let e2 = Engine::new(
        config(&s.cache.join("2"), Duration::from_secs(60)),
        Arc::new(LocalOrigin::new(&s.origin).unwrap()),
    )
    .unwrap();
    e2.read_dir(Path::new("src")).unwrap();
    for f in files.iter().rev() {
        let want = std::fs::read(dir.join(f)).unwrap();
        assert_eq!(read_all(&e2, &format!("src/{f}")), want, "{f}");
    }
    assert_eq!(e2.stats().dir_prefetches, 0);
}

/// Counts the listings (by directory) and attribute requests (by path) asked of the
/// origin it wraps.
struct CountingOrigin {
    inner: Arc<dyn Origin>,
    listings: Arc<std::sync::Mutex<std::collections::HashMap<PathBuf, u64>>>,
    stated: Arc<std::sync::Mutex<std::collections::HashMap<PathBuf, u64>>>,
}

impl Origin for CountingOrigin {
    fn stat(&self, path: &Path) -> std::io::Result<strata::origin::Attr> {
        let r = self.inner.stat(path);
        *self
            .stated
            .lock()
            .unwrap()
            .entry(path.to_path_buf())
            .or_default() += 1;
        r
    }
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn strata::origin::OriginFile>> {
        self.inner.open(path)
    }
    fn read_dir(&self, path: &Path) -> std::io::Result<Vec<strata::origin::DirEntry>> {
        *self
            .listings
            .lock()
            .unwrap()
            .entry(path.to_path_buf())
            .or_default() += 1;
        self.inner.read_dir(path)
    }
    fn read_link(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        self.inner.read_link(path)
    }
    fn get_xattr(&self, path: &Path, name: &std::ffi::OsStr) -> std::io::Result<Vec<u8>> {
        self.inner.get_xattr(path, name)
    }
    fn list_xattr(&self, path: &Path) -> std::io::Result<Vec<std::ffi::OsString>> {
        self.inner.list_xattr(path)
    }
    fn statfs(&self) -> std::io::Result<strata::origin::FsStats> {
        self.inner.statfs()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[test]
fn subdirectories_listed_in_order_are_listed_ahead() {
    let s = setup();
    let top = s.origin.join("tree");
    for d in 0..20 {
        let sub = top.join(format!("d{d:02}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..3 {
            std::fs::write(sub.join(format!("f{f}")), b"x").unwrap();
        }
        // Files among the directories do not count in the window.
        std::fs::write(top.join(format!("d{d:02}.txt")), b"y").unwrap();
    }
    let listings = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let listed = |d: &str| -> u64 {
        listings
            .lock()
            .unwrap()
            .get(Path::new(d))
            .copied()
            .unwrap_or(0)
    };
    let wait_listed = |d: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while listed(d) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let stated = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let origin: Arc<dyn Origin> = Arc::new(CountingOrigin {
        inner: Arc::new(LocalOrigin::new(&s.origin).unwrap()),
        listings: listings.clone(),
        stated: stated.clone(),
    });
    let e = Engine::new(config(&s.cache, Duration::from_secs(60)), origin).unwrap();
    let mut subdirs: Vec<String> = e
        .read_dir(Path::new("tree"))
        .unwrap()
        .iter()
        .filter(|d| d.kind == strata::origin::FileKind::Dir)
        .map(|d| format!("tree/{}", d.name.to_string_lossy()))
        .collect();
    assert_eq!(subdirs.len(), 20);
    let stat_all = |d: &str| {
        for f in e.read_dir(Path::new(d)).unwrap().iter() {
            assert_eq!(e.stat(&Path::new(d).join(&f.name)).unwrap().size, 1);
        }
    };
    // The walk enters the first subdirectory: the next ones are listed ahead, with
    // their entries' attributes.
    stat_all(&subdirs[0]);
    // Counted per file of these directories: the walk's own steps list further
    // directories ahead meanwhile, whose requests a global count would include.
    let files: Vec<PathBuf> = subdirs[1..5]
        .iter()
        .flat_map(|d| (0..3).map(move |f| Path::new(d).join(format!("f{f}"))))
        .collect();
    let asked = || -> Vec<u64> {
        let st = stated.lock().unwrap();
        files
            .iter()
            .map(|f| st.get(f).copied().unwrap_or(0))
            .collect()
    };
    for d in &subdirs[1..5] {
        wait_listed(d);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while asked().contains(&0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    // The attributes are cached just after the origin answers.
    std::thread::sleep(Duration::from_millis(100));
    let before = asked();
    for d in &subdirs[1..5] {
        stat_all(d);
    }
    assert_eq!(asked(), before, "attributes came ahead");
    // And so on to the end, each directory listed once: ahead, never again.
    for d in &subdirs[5..] {
        wait_listed(d);
        stat_all(d);
    }
    for d in &subdirs {
        assert_eq!(listed(d), 1, "{d}");
    }
    assert!(e.stats().list_prefetches >= 19, "{:?}", e.stats());

    // Directories listed in no particular order are not a walk.
    subdirs.reverse();
    let e2 = Engine::new(
        config(&s.cache.join("2"), Duration::from_secs(60)),
        Arc::new(LocalOrigin::new(&s.origin).unwrap()),
    )
    .unwrap();
    e2.read_dir(Path::new("tree")).unwrap();
    for d in &subdirs {
        e2.read_dir(Path::new(d)).unwrap();
    }
    assert_eq!(e2.stats().list_prefetches, 0);
}
