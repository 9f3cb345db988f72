//! Builds the JavaScript and Python example plugins (`plugins/js/<name>`, `plugins/python/<name>`)
//! by their folders' conventions, at most once per test process and folder, and gives the
//! component's path.
//!
//! - JavaScript: `npm ci` (skipped when `node_modules` is newer than `package-lock.json`), then
//!   `npm run build`; the component is the one `.wasm` in `dist/`.
//! - Python: `python3 -m venv .venv` and `.venv/bin/pip install -r requirements.txt` (skipped when
//!   the venv's `componentize-py` is newer than `requirements.txt`), then
//!   `.venv/bin/componentize-py -d <wit> -w <world> componentize <module> -o dist/<folder>.wasm`,
//!   with `wit`, `world` and `module` from `pyproject.toml`'s `[tool.mediary]` table.
//!
//! A component newer than every source file of its folder (and `wit/`) is not built again, so a
//! re-run costs nothing and Mediary's compile cache, keyed by the component's digest, still holds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
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
    once(repo_root().join("plugins/js").join(name), build_js)
}

/// The component built from `plugins/python/<name>`.
pub fn python_plugin(name: &str) -> PathBuf {
    once(repo_root().join("plugins/python").join(name), build_python)
}

/// Held while a guest is built or a Mediary compiles components at start: each takes both cores of
/// a small machine for seconds (a cold 12-18 MB component: 10-15 s of Cranelift), and two at once
/// can push a Mediary past its 30 s start-up timeout.
pub fn heavy_work() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `build` for `dir` once per process; concurrent callers for the same folder wait for it.
fn once(dir: PathBuf, build: fn(&Path) -> PathBuf) -> PathBuf {
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

fn build_js(dir: &Path) -> PathBuf {
    let dist = dir.join("dist");
    if let Some(wasm) = single_wasm(&dist).filter(|wasm| up_to_date(dir, wasm)) {
        return wasm;
    }
    const NODE: &str = "install Node.js 20 or later (with npm) to build the JavaScript plugins";
    // npm writes node_modules/.package-lock.json at every install: older than the lock, stale.
    if !newer_than(
        &dir.join("node_modules/.package-lock.json"),
        &dir.join("package-lock.json"),
    ) {
        run(Command::new("npm").arg("ci").current_dir(dir), NODE);
    }
    run(
        Command::new("npm").args(["run", "build"]).current_dir(dir),
        NODE,
    );
    single_wasm(&dist).unwrap_or_else(|| {
        panic!(
            "`npm run build` in {} left no single .wasm in dist/",
            dir.display()
        )
    })
}

fn build_python(dir: &Path) -> PathBuf {
    let project = dir.join("pyproject.toml");
    let text = std::fs::read_to_string(&project)
        .unwrap_or_else(|error| panic!("reading {}: {error}", project.display()));
    let setting = |key: &str| {
        tool_mediary(&text, key).unwrap_or_else(|| {
            panic!(
                "{} has no `{key} = \"...\"` in its [tool.mediary] table",
                project.display()
            )
        })
    };
    let (world, wit, module) = (setting("world"), setting("wit"), setting("module"));
    let name = dir
        .file_name()
        .expect("a plugin folder has a name")
        .to_string_lossy();
    let wasm = dir.join("dist").join(format!("{name}.wasm"));
    if wasm.is_file() && up_to_date(dir, &wasm) {
        return wasm;
    }
    const PYTHON: &str =
        "install Python 3.11 or later (with venv and pip) to build the Python plugins";
    let venv = dir.join(".venv");
    let componentize = venv.join("bin/componentize-py");
    if !newer_than(&componentize, &dir.join("requirements.txt")) {
        run(
            Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .current_dir(dir),
            PYTHON,
        );
        run(
            Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "-r", "requirements.txt"])
                .current_dir(dir),
            PYTHON,
        );
    }
    std::fs::create_dir_all(dir.join("dist"))
        .unwrap_or_else(|error| panic!("creating {}/dist: {error}", dir.display()));
    run(
        Command::new(&componentize)
            .args([
                "--quiet",
                "-d",
                &wit,
                "-w",
                &world,
                "componentize",
                &module,
                "-o",
            ])
            .arg(&wasm)
            .current_dir(dir),
        PYTHON,
    );
    wasm
}

/// The string value of `key` in the `[tool.mediary]` table of a `pyproject.toml` (only the
/// `key = "value"` lines that table uses).
fn tool_mediary(pyproject: &str, key: &str) -> Option<String> {
    let mut in_table = false;
    for line in pyproject.lines().map(str::trim) {
        if line.starts_with('[') {
            in_table = line == "[tool.mediary]";
            continue;
        }
        if !in_table {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        if name.trim() == key {
            let value = value.trim();
            return value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .map(str::to_owned);
        }
    }
    None
}

/// Whether `path` exists and was modified after `than` (or `than` does not exist).
fn newer_than(path: &Path, than: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(path), modified(than)) {
        (Some(path), Some(than)) => path > than,
        (Some(_), None) => true,
        (None, _) => false,
    }
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

/// Runs `command` to completion; panics with its output when it fails, or with `missing` when its
/// program cannot be found.
fn run(command: &mut Command, missing: &str) {
    let program = command.get_program().to_string_lossy().into_owned();
    let shown = format!(
        "`{program} {}` in {}",
        command
            .get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
        command
            .get_current_dir()
            .map_or_else(|| ".".into(), |d| d.display().to_string())
    );
    let output = match command.output() {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            panic!("{program} was not found: {missing}")
        }
        Err(error) => panic!("cannot run {shown}: {error}"),
    };
    assert!(
        output.status.success(),
        "{shown} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[cfg(test)]
mod unit {
    use super::tool_mediary;

    #[test]
    fn reads_the_tool_mediary_table() {
        let text = "[project]\nname = \"x\"\nmodule = \"no\"\n\n[tool.mediary]\n# comment\nworld = \"router-plugin\"\nmodule = \"app\"\n[other]\nwit = \"no\"\n";
        assert_eq!(
            tool_mediary(text, "world").as_deref(),
            Some("router-plugin")
        );
        assert_eq!(tool_mediary(text, "module").as_deref(), Some("app"));
        assert_eq!(tool_mediary(text, "wit"), None);
    }
}
