//! Builds Mediary's guest plugins from source, as Spin and wasmtime build their test components, so
//! the tests always run the plugins of the same commit.
//!
//! Runs `cargo build --release --target wasm32-wasip2` on the `plugins/` workspace (its own
//! workspace, for another target) with the target directory `plugins/target`, which a developer's
//! own plugin builds share, so an unchanged tree costs one no-op cargo run. Then sets
//! `MEDIARY_PLUGIN_<NAME>` to each component's absolute path for `src/plugins.rs`.

use std::env;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The plugins' target.
const TARGET: &str = "wasm32-wasip2";

/// `MEDIARY_PLUGIN_<suffix>` and the component's file name (the crate's, with `_`).
const PLUGINS: [(&str, &str); 7] = [
    ("ROUTER", "mediary_router"),
    ("LAB_CSV", "mediary_lab_csv"),
    ("GUARD", "mediary_guard"),
    ("TEST_MISBEHAVE", "test_misbehave"),
    ("TEST_PROBE", "test_probe"),
    ("TEST_TAG_A", "test_tag_a"),
    ("TEST_TAG_B", "test_tag_b"),
];

/// Variables the outer build sets (or a developer set for it) that would change, or break, the
/// inner one: flags and wrappers meant for the host target, the outer target directory, the outer
/// jobserver, the outer package's identity and profile overrides.
const REMOVED: [&str; 20] = [
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_TARGET_DIR",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CLIPPY_ARGS",
];

/// Prefixes of variables removed for the same reasons (`CARGO_TARGET_<triple>_LINKER`,
/// `CARGO_PROFILE_RELEASE_LTO`, the outer package's `CARGO_PKG_*` and `CARGO_CFG_*`).
const REMOVED_PREFIXES: [&str; 5] = [
    "CARGO_TARGET_",
    "CARGO_PROFILE_",
    "CARGO_PKG_",
    "CARGO_CFG_",
    "CARGO_FEATURE_",
];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("the tests crate lives inside the workspace");
    let plugins = root.join("plugins");
    let target_dir = plugins.join("target");

    // Directories are scanned recursively; `plugins/target` is not under any of them.
    for watched in [
        plugins.join("Cargo.toml"),
        plugins.join("Cargo.lock"),
        plugins.join(".cargo"),
        plugins.join("rust"),
        root.join("wit"),
    ] {
        println!("cargo:rerun-if-changed={}", watched.display());
    }

    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    require_target(Path::new(&rustc));

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            TARGET,
            "--manifest-path",
        ])
        .arg(plugins.join("Cargo.toml"))
        // The plugins' own `.cargo/config.toml` is found from the working directory.
        .current_dir(&plugins)
        // Cargo reads stdout for `cargo:` directives: the inner build's output goes to stderr.
        .stdout(Stdio::from(io::stderr()));
    for name in REMOVED {
        build.env_remove(name);
    }
    for (name, _) in env::vars_os() {
        let removed = name.to_str().is_some_and(|name| {
            REMOVED_PREFIXES
                .iter()
                .any(|prefix| name.starts_with(prefix))
        });
        if removed {
            build.env_remove(&name);
        }
    }
    // After the removals, which include the outer `CARGO_TARGET_DIR`.
    build.env("CARGO_TARGET_DIR", &target_dir);
    let status = build
        .status()
        .unwrap_or_else(|error| panic!("cannot run cargo to build the plugins: {error}"));
    assert!(
        status.success(),
        "building the plugins failed ({status}): run `cargo build --release` in {} to see why",
        plugins.display()
    );

    let release = target_dir.join(TARGET).join("release");
    for (name, file) in PLUGINS {
        let wasm = release.join(format!("{file}.wasm"));
        assert!(
            wasm.is_file(),
            "cargo built the plugins, but not {}",
            wasm.display()
        );
        println!("cargo:rustc-env=MEDIARY_PLUGIN_{name}={}", wasm.display());
    }
}

/// Fails the build with the fix when the toolchain cannot build for the plugins' target.
fn require_target(rustc: &Path) {
    let output = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", rustc.display()));
    let libdir = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !Path::new(libdir.trim()).is_dir() {
        panic!(
            "the Rust target {TARGET} is not installed, and the tests need it to build Mediary's \
             plugins: run `rustup target add {TARGET}`"
        );
    }
}
