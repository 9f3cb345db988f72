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
        let status = std::process::Command::new(cargo)
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

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
}
