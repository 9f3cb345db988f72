//! `mediary plugin new`: a plugin folder to start from, in Rust, JavaScript or Python.
//!
//! The templates (`host/templates/`) are embedded in the binary, and so is `wit/plugin.wit`, so
//! a scaffold always matches the interface of the Mediary that made it. The three languages
//! implement the same small router and share `tests/cases.json`, so each passes the same cases.

use std::path::{Path, PathBuf};

/// The language of a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust (cargo, wasm32-wasip2, wit-bindgen).
    Rust,
    /// JavaScript (npm, componentize-js).
    Js,
    /// Python (pip, componentize-py).
    Python,
}

/// The WIT world a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum World {
    /// Routes, answers or refuses requests (`on-request`).
    RouterPlugin,
    /// Also transforms the upstream's responses (`on-response`).
    ChannelPlugin,
}

impl World {
    pub fn as_str(self) -> &'static str {
        match self {
            World::RouterPlugin => "router-plugin",
            World::ChannelPlugin => "channel-plugin",
        }
    }
}

const WIT: &str = include_str!("../../../wit/plugin.wit");
const README: &str = include_str!("../../templates/common/README.md");
const GITIGNORE: &str = include_str!("../../templates/common/gitignore");
const CASES: &str = include_str!("../../templates/common/cases.json");

const RUST_CARGO: &str = include_str!("../../templates/rust/Cargo.toml");
const RUST_CONFIG: &str = include_str!("../../templates/rust/.cargo/config.toml");
const RUST_LIB: &str = include_str!("../../templates/rust/src/lib.rs");
const RUST_TRANSFORMER: &str = include_str!("../../templates/rust/transformer.rs");

const JS_PACKAGE: &str = include_str!("../../templates/js/package.json");
const JS_PLUGIN: &str = include_str!("../../templates/js/src/plugin.js");
const JS_TRANSFORMER: &str = include_str!("../../templates/js/transformer.js");

const PY_APP: &str = include_str!("../../templates/python/app.py");
const PY_TRANSFORMER: &str = include_str!("../../templates/python/transformer.py");
const PY_REQUIREMENTS: &str = include_str!("../../templates/python/requirements.txt");
const PY_PROJECT: &str = include_str!("../../templates/python/pyproject.toml");

/// Checks a plugin's name: what the API accepts as a plugin name and what every language accepts
/// as a package name.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a plugin name: use 1 to 64 lower-case letters, digits and `-`, starting with a letter (e.g. `fhir-router`)"
        ))
    }
}

/// Creates `parent/name/` for a plugin in `lang`; returns the folder and the files written.
pub fn create(
    lang: Lang,
    name: &str,
    parent: &Path,
    world: World,
) -> Result<(PathBuf, Vec<&'static str>), String> {
    check_name(name)?;
    let dir = parent.join(name);
    if dir.exists() {
        return Err(format!(
            "{} already exists; choose another name or --dir, or remove it",
            dir.display()
        ));
    }
    let transforms = world == World::ChannelPlugin;
    let pick = |text: &'static str| if transforms { text } else { "" };
    let (language, source, artifact, build_note) = match lang {
        Lang::Rust => (
            "Rust",
            "`src/lib.rs`",
            format!(
                "target/wasm32-wasip2/release/{}.wasm",
                name.replace('-', "_")
            ),
            "This runs `cargo build --release` (target `wasm32-wasip2`: `rustup target add wasm32-wasip2` once). Unit tests run natively: `cargo test --target \"$(rustc -vV | sed -n 's/host: //p')\"`.",
        ),
        Lang::Js => (
            "JavaScript",
            "`src/plugin.js`",
            format!("dist/{name}.wasm"),
            "This runs `npm install` (the first time) and `npm run build`, which calls componentize-js.",
        ),
        Lang::Python => (
            "Python",
            "`app.py`",
            format!("dist/{name}.wasm"),
            "This creates `.venv`, installs `requirements.txt` into it (the first time) and runs componentize-py.",
        ),
    };
    let fill = |text: &str| {
        text.replace("{{rust_transformer}}", pick(RUST_TRANSFORMER))
            .replace("{{js_transformer}}", pick(JS_TRANSFORMER))
            .replace("{{python_transformer}}", pick(PY_TRANSFORMER))
            .replace(
                "{{transformer_note}}",
                if transforms {
                    "\n- every answer from a route gets an `x-mediary-plugin` header (`on-response`)."
                } else {
                    ""
                },
            )
            .replace("{{language}}", language)
            .replace("{{source}}", source)
            .replace("{{artifact}}", &artifact)
            .replace("{{build_note}}", build_note)
            .replace("{{world}}", world.as_str())
            .replace("{{name}}", name)
    };
    let mut files: Vec<(&'static str, String)> = vec![
        ("wit/plugin.wit", WIT.to_owned()),
        ("README.md", fill(README)),
        (".gitignore", GITIGNORE.to_owned()),
        ("tests/cases.json", CASES.to_owned()),
    ];
    match lang {
        Lang::Rust => files.extend([
            ("Cargo.toml", fill(RUST_CARGO)),
            (".cargo/config.toml", RUST_CONFIG.to_owned()),
            ("src/lib.rs", fill(RUST_LIB)),
        ]),
        Lang::Js => files.extend([
            ("package.json", fill(JS_PACKAGE)),
            ("src/plugin.js", fill(JS_PLUGIN)),
        ]),
        Lang::Python => files.extend([
            ("pyproject.toml", fill(PY_PROJECT)),
            ("requirements.txt", PY_REQUIREMENTS.to_owned()),
            ("app.py", fill(PY_APP)),
        ]),
    }
    let written = files.iter().map(|(path, _)| *path).collect();
    let result = files.iter().try_for_each(|(path, text)| {
        let path = dir.join(path);
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder)?;
        }
        std::fs::write(&path, text)
    });
    result.map_err(|e| format!("cannot write into {}: {e}", dir.display()))?;
    Ok((dir, written))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lower_case_letters_digits_and_dashes() {
        for good in ["a", "fhir-router", "lab2csv"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Fhir",
            "2fast",
            "a_b",
            "a.b",
            "a-",
            "../x",
            &"a".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        let parent = std::env::temp_dir().join(format!("mediary-scaffold-{}", std::process::id()));
        for lang in [Lang::Rust, Lang::Js, Lang::Python] {
            for world in [World::RouterPlugin, World::ChannelPlugin] {
                let _ = std::fs::remove_dir_all(&parent);
                let (dir, files) = create(lang, "my-plugin", &parent, world).expect("created");
                for file in files {
                    let text = std::fs::read_to_string(dir.join(file)).expect("readable");
                    assert!(!text.contains("{{"), "{lang:?} {file}: {text}");
                }
                let again = create(lang, "my-plugin", &parent, world).unwrap_err();
                assert!(again.contains("already exists"), "{again}");
            }
        }
        let _ = std::fs::remove_dir_all(&parent);
    }
}
