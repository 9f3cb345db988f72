//! Where the `mediary` executable under test comes from.
//!
//! `MEDIARY_BIN` wins (CI can test a release build, or a binary built
//! elsewhere). Otherwise the workspace builds it with the profile of the
//! running tests, into the workspace's own target directory, so the build
//! shares artifacts with a plain `cargo build -p mediary`. No `--target` is
//! passed on purpose: it would move the artifacts to `target/<triple>/` and
//! rebuild every dependency a second time.

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
        let manifest = workspace_root().join("Cargo.toml");
        let built = escargot::CargoBuild::new()
            .manifest_path(&manifest)
            .package("mediary")
            .bin("mediary")
            .current_release()
            .run()
            .unwrap_or_else(|error| panic!("cargo could not build mediary: {error}"));
        built.path().to_path_buf()
    })
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
}
