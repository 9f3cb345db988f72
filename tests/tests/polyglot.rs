//! The example plugins in every language they are written in behave the same: each case of
//! `plugins/cases/<plugin>.json` goes through a real Mediary to the Rust, JavaScript and Python
//! versions of the plugin, with a fresh instance per request and with reused instances, and must
//! give the same answer, reach the same upstream with the same request, and log the same lines.
//!
//! The Rust components come from `build.rs`; the JavaScript and Python ones are built here from
//! `plugins/js/<plugin>` and `plugins/python/<plugin>` (see [`mediary_e2e::guests`]), which needs
//! Node.js 20 with npm and Python 3.11 with venv and pip. Their compiled code is cached in
//! `target/plugin-cache-tests`, so only the first run after a change compiles them.

use std::path::Path;

use mediary_e2e::cases::CaseFile;
use mediary_e2e::guests::{js_plugin, python_plugin};
use mediary_e2e::plugins::{LAB_CSV, ROUTER};

/// Both isolation modes: state kept between requests must not change any answer.
const ISOLATIONS: [&str; 2] = ["reuse", "per-request"];

#[test]
fn router_in_rust() {
    CaseFile::load("router").run("Rust", Path::new(ROUTER), &ISOLATIONS);
}

#[test]
fn router_in_javascript() {
    CaseFile::load("router").run("JavaScript", &js_plugin("router"), &ISOLATIONS);
}

#[test]
fn router_in_python() {
    CaseFile::load("router").run("Python", &python_plugin("router"), &ISOLATIONS);
}

#[test]
fn lab_csv_in_rust() {
    CaseFile::load("lab-csv").run("Rust", Path::new(LAB_CSV), &ISOLATIONS);
}

#[test]
fn lab_csv_in_python() {
    CaseFile::load("lab-csv").run("Python", &python_plugin("lab-csv"), &ISOLATIONS);
}

#[test]
fn lab_csv_in_javascript() {
    CaseFile::load("lab-csv").run("JavaScript", &js_plugin("lab-csv"), &ISOLATIONS);
}

/// A componentize-py component instantiates 14 core modules (JavaScript 4, Rust 3): the instance
/// pool must hold them even when it has room for a single plugin instance.
#[test]
fn python_fits_a_pool_of_one_instance() {
    CaseFile::load("router").run_with(
        "Python",
        &python_plugin("router"),
        &["per-request"],
        "max_instances = 1",
    );
}
