//! Builds the JavaScript and Python example plugins (`plugins/js/<name>`, `plugins/python/<name>`)
//! with `mediary plugin build` (the binary under test: `npm ci` / `npm run build`, or a `.venv`
//! with the pinned componentize-py, by the folder's build file), at most once per test process and
//! folder, and gives the component's path: the one `.wasm` in the folder's `dist/`.
//!
//! A component newer than every source file of its folder (and `wit/`) is not built again, so a
//! re-run costs nothing and Mediary's compile cache, keyed by the component's digest, still holds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::binary::mediary_bin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Instant, SystemTime};

/// The repository's root (the tests crate's parent folder).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the repository")
}

/// The component built from `plugins/js/<name>`.
pub fn js_plugin(name: &str) -> PathBuf {
    once(repo_root().join("plugins/js").join(name))
}

/// The component built from `plugins/python/<name>`.
pub fn python_plugin(name: &str) -> PathBuf {
    once(repo_root().join("plugins/python").join(name))
}

/// Held while a guest is built or a Mediary compiles components at start: each takes both cores of
/// a small machine for seconds (a cold 12-18 MB component: 10-15 s of Cranelift), and two at once
/// can push a Mediary past its 30 s start-up timeout.
pub fn heavy_work() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Builds `dir` once per process; concurrent callers for the same folder wait for it.
fn once(dir: PathBuf) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<PathBuf, Arc<OnceLock<PathBuf>>>>> = OnceLock::new();
    let cell = BUILT
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(dir.clone())
        .or_default()
        .clone();
    cell.get_or_init(|| {
        assert!(dir.is_dir(), "no plugin folder {}", dir.display());
        let heavy = heavy_work();
        let started = Instant::now();
        let wasm = build(&dir);
        drop(heavy);
        eprintln!(
            "plugin {} ready in {:.1} s: {} ({} bytes)",
            dir.display(),
            started.elapsed().as_secs_f64(),
            wasm.display(),
            std::fs::metadata(&wasm).map_or(0, |m| m.len())
        );
        wasm
    })
    .clone()
}

/// `mediary plugin build DIR`, unless the component in `dist/` is newer than its sources.
fn build(dir: &Path) -> PathBuf {
    let dist = dir.join("dist");
    if let Some(wasm) = single_wasm(&dist).filter(|wasm| up_to_date(dir, wasm)) {
        return wasm;
    }
    let output = Command::new(mediary_bin())
        .args(["plugin", "build"])
        .arg(dir)
        .output()
        .unwrap_or_else(|error| panic!("cannot run mediary plugin build: {error}"));
    assert!(
        output.status.success(),
        "`mediary plugin build {}` failed ({}; it needs Node.js 20 with npm for JavaScript, Python 3.11 with venv for Python):\n{}\n{}",
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    single_wasm(&dist).unwrap_or_else(|| {
        panic!(
            "`mediary plugin build {}` left no single .wasm in dist/",
            dir.display()
        )
    })
}

/// The only `.wasm` file in `dist`, if there is exactly one.
fn single_wasm(dist: &Path) -> Option<PathBuf> {
    let mut found = std::fs::read_dir(dist)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "wasm"));
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// Whether `wasm` is newer than every source file of `dir` (outside dependencies and build
/// output) and of the repository's `wit/`.
fn up_to_date(dir: &Path, wasm: &Path) -> bool {
    let Ok(built) = std::fs::metadata(wasm).and_then(|m| m.modified()) else {
        return false;
    };
    newest(dir).max(newest(&repo_root().join("wit"))) < built
}

/// The latest modification time under `path`, skipping dependencies and build output.
fn newest(path: &Path) -> SystemTime {
    const SKIPPED: [&str; 4] = ["node_modules", ".venv", "dist", "__pycache__"];
    let Ok(metadata) = std::fs::metadata(path) else {
        return SystemTime::UNIX_EPOCH;
    };
    if !metadata.is_dir() {
        return metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    }
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|entry| !SKIPPED.iter().any(|s| entry.file_name() == *s))
        .map(|entry| newest(&entry.path()))
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH)
}
