//! `mediary plugin build`: finds what kind of plugin a folder holds and runs its toolchain.
//!
//! - `Cargo.toml`: `cargo build --release --target wasm32-wasip2`; the component is the `.wasm`
//!   cargo reports.
//! - `package.json`: `npm ci` (a lock file and no `node_modules`) or `npm install` (no
//!   `node_modules`, or `package.json` changed since), then `npm run build`; the component is the
//!   one `.wasm` in `dist/`.
//! - `pyproject.toml` with `[tool.mediary]`, or `requirements.txt` with `app.py`: a `.venv` with
//!   `requirements.txt` installed (again when it changes), then `componentize-py -d <wit> -w <world>
//!   componentize <module> -o dist/<folder name>.wasm`.
//!
//! The toolchain's output goes straight to the terminal.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

/// What went wrong: the user's call (64) or the build (1).
#[derive(Debug)]
pub enum BuildError {
    /// Nothing to build here, or a build file that does not say how.
    Usage(String),
    /// A tool is missing or the build failed.
    Failed(String),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::Usage(m) | BuildError::Failed(m) => f.write_str(m),
        }
    }
}

/// How a folder's plugin is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Project {
    Rust,
    Js,
    Python {
        world: String,
        wit: PathBuf,
        module: String,
    },
}

impl Project {
    pub fn language(&self) -> &'static str {
        match self {
            Project::Rust => "Rust",
            Project::Js => "JavaScript",
            Project::Python { .. } => "Python",
        }
    }
}

/// The kind of plugin in `dir`.
pub fn detect(dir: &Path) -> Result<Project, BuildError> {
    if !dir.is_dir() {
        return Err(BuildError::Usage(format!(
            "{}: no such folder",
            dir.display()
        )));
    }
    if dir.join("Cargo.toml").is_file() {
        return Ok(Project::Rust);
    }
    if dir.join("package.json").is_file() {
        return Ok(Project::Js);
    }
    let pyproject = dir.join("pyproject.toml");
    if pyproject.is_file() {
        let text = std::fs::read_to_string(&pyproject)
            .map_err(|e| BuildError::Usage(format!("{}: {e}", pyproject.display())))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            BuildError::Usage(format!(
                "{}: not valid TOML: {}",
                pyproject.display(),
                e.message()
            ))
        })?;
        let mediary = table
            .get("tool")
            .and_then(|t| t.get("mediary"))
            .and_then(toml::Value::as_table);
        if let Some(mediary) = mediary {
            let text = |key: &str, default: &str| -> Result<String, BuildError> {
                match mediary.get(key) {
                    None => Ok(default.to_owned()),
                    Some(toml::Value::String(s)) => Ok(s.clone()),
                    Some(_) => Err(BuildError::Usage(format!(
                        "{}: [tool.mediary] {key} must be a string",
                        pyproject.display()
                    ))),
                }
            };
            let world = text("world", "router-plugin")?;
            if world != "router-plugin" && world != "channel-plugin" {
                return Err(BuildError::Usage(format!(
                    "{}: [tool.mediary] world = \"{world}\" is not \"router-plugin\" or \"channel-plugin\"",
                    pyproject.display()
                )));
            }
            return Ok(Project::Python {
                world,
                wit: PathBuf::from(text("wit", "wit")?),
                module: text("module", "app")?,
            });
        }
    }
    if dir.join("requirements.txt").is_file() && dir.join("app.py").is_file() {
        return Ok(Project::Python {
            world: "router-plugin".into(),
            wit: "wit".into(),
            module: "app".into(),
        });
    }
    Err(BuildError::Usage(format!(
        "{}: nothing to build: expected Cargo.toml (Rust), package.json (JavaScript), or pyproject.toml with [tool.mediary] (Python); `mediary plugin new` creates one",
        dir.display()
    )))
}

/// Builds the plugin in `dir`; returns the component's path.
pub fn build(dir: &Path) -> Result<PathBuf, BuildError> {
    let project = detect(dir)?;
    eprintln!(
        "Building the {} plugin in `{}`.",
        project.language(),
        dir.display()
    );
    match project {
        Project::Rust => build_rust(dir),
        Project::Js => build_js(dir),
        Project::Python { world, wit, module } => build_python(dir, &world, &wit, &module),
    }
}

/// The component a previous build left (for `plugin test --no-build`).
pub fn artifact(dir: &Path) -> Result<PathBuf, BuildError> {
    match detect(dir)? {
        Project::Rust => {
            let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).map_err(|e| {
                BuildError::Usage(format!("{}: {e}", dir.join("Cargo.toml").display()))
            })?;
            let table: toml::Table = toml::from_str(&manifest)
                .map_err(|e| BuildError::Usage(format!("Cargo.toml: {}", e.message())))?;
            let name = table
                .get("lib")
                .and_then(|l| l.get("name"))
                .or_else(|| table.get("package").and_then(|p| p.get("name")))
                .and_then(toml::Value::as_str)
                .ok_or_else(|| BuildError::Usage("Cargo.toml has no package name".into()))?
                .replace('-', "_");
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| dir.join("target"), PathBuf::from);
            let path = target.join(format!("wasm32-wasip2/release/{name}.wasm"));
            if path.is_file() {
                Ok(path)
            } else {
                Err(BuildError::Failed(format!(
                    "{} is not built yet; run `mediary plugin build`",
                    path.display()
                )))
            }
        }
        Project::Js | Project::Python { .. } => single_wasm(&dir.join("dist")),
    }
}

/// Fails with a one-line hint when `tool` is not on the PATH.
fn require(tool: &str, hint: &str) -> Result<(), BuildError> {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()));
    if found {
        Ok(())
    } else {
        Err(BuildError::Failed(format!(
            "`{tool}` was not found on the PATH: {hint}"
        )))
    }
}

/// Runs `command` in `dir` with its output on the terminal.
fn run(mut command: Command, dir: &Path, what: &str) -> Result<(), BuildError> {
    let status = command
        .current_dir(dir)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| BuildError::Failed(format!("cannot run {what}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(BuildError::Failed(format!("{what} failed ({status})")))
    }
}

fn build_rust(dir: &Path) -> Result<PathBuf, BuildError> {
    require("cargo", "install Rust from https://rustup.rs")?;
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(sysroot) = sysroot
        && !sysroot.join("lib/rustlib/wasm32-wasip2").is_dir()
    {
        return Err(BuildError::Failed(
            "the wasm32-wasip2 target is not installed: run `rustup target add wasm32-wasip2`"
                .into(),
        ));
    }
    let mut command = Command::new("cargo");
    command
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .arg("--message-format=json-render-diagnostics")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let output = command
        .spawn()
        .and_then(|child| child.wait_with_output())
        .map_err(|e| BuildError::Failed(format!("cannot run cargo: {e}")))?;
    if !output.status.success() {
        return Err(BuildError::Failed(format!(
            "cargo build failed ({})",
            output.status
        )));
    }
    let mut found = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let wasm = message["filenames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_str)
            .find(|f| f.ends_with(".wasm"));
        if let Some(wasm) = wasm {
            found = Some(PathBuf::from(wasm));
        }
    }
    found.ok_or_else(|| {
        BuildError::Failed(
            "cargo built no .wasm: is the crate a `cdylib` (`[lib] crate-type = [\"cdylib\"]`)?"
                .into(),
        )
    })
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Whether `output` is missing or older than `input`.
fn stale(output: &Path, input: &Path) -> bool {
    match (modified(output), modified(input)) {
        (Some(out), Some(inp)) => out < inp,
        (None, _) => true,
        (Some(_), None) => false,
    }
}

fn build_js(dir: &Path) -> Result<PathBuf, BuildError> {
    require("node", "install Node.js 20 or later (https://nodejs.org)")?;
    require("npm", "install npm (it comes with Node.js)")?;
    let modules = dir.join("node_modules");
    let lock = dir.join("package-lock.json");
    if !modules.is_dir() && lock.is_file() {
        let mut npm = Command::new("npm");
        npm.args(["ci", "--no-audit", "--no-fund"]);
        run(npm, dir, "npm ci")?;
    } else if stale(
        &modules.join(".package-lock.json"),
        &dir.join("package.json"),
    ) {
        let mut npm = Command::new("npm");
        npm.args(["install", "--no-audit", "--no-fund"]);
        run(npm, dir, "npm install")?;
    }
    let dist = dir.join("dist");
    std::fs::create_dir_all(&dist)
        .map_err(|e| BuildError::Failed(format!("cannot create {}: {e}", dist.display())))?;
    let mut npm = Command::new("npm");
    npm.args(["run", "build"]);
    run(npm, dir, "npm run build")?;
    single_wasm(&dist)
}

fn build_python(dir: &Path, world: &str, wit: &Path, module: &str) -> Result<PathBuf, BuildError> {
    require(
        "python3",
        "install Python 3.10 or later with venv (e.g. `apt install python3-venv`)",
    )?;
    let venv = dir.join(".venv");
    let requirements = dir.join("requirements.txt");
    let installed = venv.join(".mediary-installed");
    if !venv.join("bin/python").is_file() {
        let mut python = Command::new("python3");
        python.args(["-m", "venv", ".venv"]);
        run(python, dir, "python3 -m venv .venv")?;
    }
    if requirements.is_file() && stale(&installed, &requirements) {
        let mut pip = Command::new(venv.join("bin/pip"));
        pip.args([
            "install",
            "--disable-pip-version-check",
            "-r",
            "requirements.txt",
        ]);
        run(pip, dir, "pip install -r requirements.txt")?;
        std::fs::write(&installed, b"").map_err(|e| {
            BuildError::Failed(format!("cannot write {}: {e}", installed.display()))
        })?;
    }
    let tool = venv.join("bin/componentize-py");
    if !tool.is_file() {
        return Err(BuildError::Failed(format!(
            "{} is missing: add `componentize-py==0.25.1` to requirements.txt",
            tool.display()
        )));
    }
    let wit_dir = dir.join(wit);
    if !wit_dir.exists() {
        return Err(BuildError::Usage(format!(
            "{}: the WIT folder named by [tool.mediary] wit does not exist",
            wit_dir.display()
        )));
    }
    let dist = dir.join("dist");
    std::fs::create_dir_all(&dist)
        .map_err(|e| BuildError::Failed(format!("cannot create {}: {e}", dist.display())))?;
    let stem = std::path::absolute(dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "plugin".into());
    let out = dist.join(format!("{stem}.wasm"));
    let mut command = Command::new(&tool);
    command
        .env(
            "VIRTUAL_ENV",
            std::path::absolute(&venv).unwrap_or(venv.clone()),
        )
        .arg("-d")
        .arg(wit)
        .args(["-w", world, "componentize", module, "-o"])
        .arg(format!("dist/{stem}.wasm"));
    run(command, dir, "componentize-py")?;
    Ok(out)
}

/// The one `.wasm` in `dist`.
fn single_wasm(dist: &Path) -> Result<PathBuf, BuildError> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dist)
        .map_err(|e| {
            BuildError::Failed(format!("{}: {e}; build the plugin first", dist.display()))
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(BuildError::Failed(format!(
            "{} holds no .wasm: the build wrote its component elsewhere",
            dist.display()
        ))),
        n => Err(BuildError::Failed(format!(
            "{} holds {n} .wasm files; remove the stale ones",
            dist.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_without_a_build_file_is_a_usage_error() {
        let dir = std::env::temp_dir().join(format!("mediary-detect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let error = detect(&dir).unwrap_err();
        assert!(
            matches!(&error, BuildError::Usage(m) if m.contains("nothing to build")),
            "{error}"
        );
        std::fs::write(
            dir.join("pyproject.toml"),
            "[tool.mediary]\nworld = \"channel-plugin\"\nwit = \"../wit\"\n",
        )
        .expect("write");
        assert_eq!(
            detect(&dir).expect("python"),
            Project::Python {
                world: "channel-plugin".into(),
                wit: "../wit".into(),
                module: "app".into()
            }
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
