//! Where the `mediary` executable under test comes from.
//!
//! `MEDIARY_BIN` wins (CI can test a release build, or a binary built
//! elsewhere). Otherwise the workspace builds it, in the dev profile, into the
//! workspace's target directory, as `cargo build --workspace --bin mediary`:
//! features are then unified across the whole workspace exactly as in
//! `cargo test --workspace`, so the two share every artifact (`-p mediary`
//! alone would build mediary a second time, with other features, on every
//! test run).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The path of the `mediary` binary; built at most once per test process.
pub fn mediary_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("MEDIARY_BIN") {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "MEDIARY_BIN={} is not a file",
                path.display()
            );
            return path;
        }
        // `cargo build --workspace`: features are unified across the workspace exactly as in
        // `cargo test --workspace`, so the two share every artifact and nothing is rebuilt.
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = std::process::Command::new(cargo);
        // `cargo test` gives this process the test crate's own variables (CARGO_MANIFEST_DIR,
        // CARGO_PKG_*, OUT_DIR, …). Build scripts that watch them (ring's does) would see them
        // change between the outer build and this one and rebuild, with everything above them, on
        // every test run.
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(is_crate_variable) {
                command.env_remove(name);
            }
        }
        let status = command
            .args([
                "build",
                "--quiet",
                "--workspace",
                "--bin",
                "mediary",
                "--manifest-path",
            ])
            .arg(workspace_root().join("Cargo.toml"))
            .status()
            .unwrap_or_else(|error| panic!("cannot run cargo to build mediary: {error}"));
        assert!(status.success(), "cargo could not build mediary ({status})");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| workspace_root().join("target"), PathBuf::from);
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        let path = target.join(profile).join("mediary");
        assert!(
            path.is_file(),
            "cargo built mediary, but not at {}",
            path.display()
        );
        path
    })
}

/// Whether `name` is one of the variables cargo sets for a crate it compiles or runs, rather than
/// one that configures cargo itself (`CARGO_HOME`, `CARGO_TARGET_DIR`, `CARGO_BUILD_*`, …).
fn is_crate_variable(name: &str) -> bool {
    const EXACT: [&str; 9] = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    EXACT.contains(&name) || name.starts_with("CARGO_PKG_") || name.starts_with("CARGO_BIN_EXE_")
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
}

#[cfg(test)]
mod unit {
    use super::is_crate_variable;

    #[test]
    fn leaves_cargo_its_own_settings() {
        for name in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "OUT_DIR",
            "CARGO_BIN_EXE_x",
        ] {
            assert!(is_crate_variable(name), "{name}");
        }
        for name in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_JOBS",
            "PATH",
        ] {
            assert!(!is_crate_variable(name), "{name}");
        }
    }
}
