//! Which language a plugin was written in, read from its component's `producers` and name sections.
//!
//! It matters for one thing: JavaScript and Python guests run an interpreter inside the component,
//! so the same logic costs them tens of times the CPU it costs a compiled guest, and they get their
//! own default deadline (`plugins.interpreted_deadline`). It is also shown by the plugin API.
//!
//! The toolchains Mediary documents leave these marks: `rustc` writes `language: Rust` (and a
//! stripped Rust component still names `wit-bindgen-rust`), clang `language: C11`, componentize-js
//! `processed-by: componentize-js` (SpiderMonkey inside). componentize-py records no producer of
//! its own (its runtime even says `language: Rust`), so a Python component is known by the core
//! modules its name section lists: `libpython3.x.so` and `libcomponentize_py_runtime.so`. The
//! interpreters are looked for first.

use std::fmt;

use wasmparser::{ComponentName, KnownCustom, Parser, Payload};

/// The language a plugin was written in, as far as its producers tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Language {
    /// componentize-js: the script runs on SpiderMonkey, interpreted.
    JavaScript,
    /// componentize-py: the module runs on CPython, interpreted.
    Python,
    Rust,
    C,
    /// Another toolchain, or one that records nothing.
    Other,
}

impl Language {
    /// Reads the producers of `wasm` (a component, or a core module) and of everything nested in it.
    /// A component that cannot be parsed is `Other`: whether it is a plugin at all is decided by
    /// compiling it.
    pub fn of(wasm: &[u8]) -> Language {
        let mut seen = Seen::default();
        for payload in Parser::new(0).parse_all(wasm) {
            let Ok(payload) = payload else {
                break;
            };
            let Payload::CustomSection(section) = payload else {
                continue;
            };
            match section.as_known() {
                KnownCustom::Producers(producers) => {
                    for field in producers.into_iter().flatten() {
                        for value in field.values.into_iter().flatten() {
                            seen.note(field.name, value.name);
                        }
                    }
                }
                KnownCustom::ComponentName(names) => {
                    for subsection in names.into_iter().flatten() {
                        if let ComponentName::CoreModules(map) | ComponentName::CoreInstances(map) =
                            subsection
                        {
                            for naming in map.into_iter().flatten() {
                                seen.note_module(naming.name);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        seen.language()
    }

    /// Whether the guest carries an interpreter (and so gets `plugins.interpreted_deadline`).
    pub fn interpreted(self) -> bool {
        matches!(self, Language::JavaScript | Language::Python)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Language::JavaScript => "javascript",
            Language::Python => "python",
            Language::Rust => "rust",
            Language::C => "c",
            Language::Other => "other",
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the producers sections named, strongest evidence first.
#[derive(Debug, Default)]
struct Seen {
    javascript: bool,
    python: bool,
    rust: bool,
    c: bool,
}

impl Seen {
    fn note(&mut self, field: &str, value: &str) {
        let value = value.to_ascii_lowercase();
        match field {
            "processed-by" | "sdk" => {
                self.javascript |= value.contains("componentize-js") || value == "jco";
                self.python |= value.contains("componentize-py");
                // A stripped Rust component (`strip = true`) loses rustc's own entry, not the
                // bindings generators' of its standard library.
                self.rust |= value == "rustc" || value == "wit-bindgen-rust";
                self.c |= value == "clang" || value == "wit-bindgen-c";
            }
            "language" => {
                self.javascript |= value == "javascript";
                self.python |= value == "python";
                self.rust |= value == "rust";
                self.c |= matches!(value.as_str(), "c" | "c89" | "c99" | "c11" | "c17" | "c23")
                    || value.starts_with("c++");
            }
            _ => {}
        }
    }

    /// A core module's name in the component's name section. componentize-py records no producer
    /// of its own but links CPython as `libpython3.x.so` and its runtime as
    /// `libcomponentize_py_runtime.so`.
    fn note_module(&mut self, name: &str) {
        let name = name.to_ascii_lowercase();
        self.python |= name.starts_with("libpython") || name.contains("componentize_py");
        self.javascript |= name.contains("componentizejs") || name.contains("starlingmonkey");
    }

    fn language(&self) -> Language {
        if self.javascript {
            Language::JavaScript
        } else if self.python {
            Language::Python
        } else if self.rust {
            Language::Rust
        } else if self.c {
            Language::C
        } else {
            Language::Other
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A core module whose only content is a producers section with `fields`.
    fn module_with_producers(fields: &[(&str, &[&str])]) -> Vec<u8> {
        fn leb(mut n: usize, out: &mut Vec<u8>) {
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    out.push(byte);
                    return;
                }
                out.push(byte | 0x80);
            }
        }
        fn name(text: &str, out: &mut Vec<u8>) {
            leb(text.len(), out);
            out.extend_from_slice(text.as_bytes());
        }
        let mut body = Vec::new();
        name("producers", &mut body);
        leb(fields.len(), &mut body);
        for (field, values) in fields {
            name(field, &mut body);
            leb(values.len(), &mut body);
            for value in *values {
                name(value, &mut body);
                name("1.0", &mut body);
            }
        }
        let mut module = b"\0asm\x01\0\0\0".to_vec();
        module.push(0);
        leb(body.len(), &mut module);
        module.extend(body);
        module
    }

    #[test]
    fn interpreters_are_found_before_the_languages_they_are_built_in() {
        let python = module_with_producers(&[
            ("language", &["C11"]),
            ("processed-by", &["clang", "componentize-py"]),
        ]);
        assert_eq!(Language::of(&python), Language::Python);
        let javascript = module_with_producers(&[
            ("language", &["C++", "Rust"]),
            ("processed-by", &["componentize-js"]),
        ]);
        assert_eq!(Language::of(&javascript), Language::JavaScript);
        assert!(Language::JavaScript.interpreted() && Language::Python.interpreted());
    }

    #[test]
    fn compiled_languages_and_unknown_input() {
        let rust = module_with_producers(&[("language", &["Rust"]), ("processed-by", &["rustc"])]);
        assert_eq!(Language::of(&rust), Language::Rust);
        assert!(!Language::Rust.interpreted());
        let stripped = module_with_producers(&[(
            "processed-by",
            &["wit-component", "wit-bindgen-rust", "wit-bindgen-c"],
        )]);
        assert_eq!(Language::of(&stripped), Language::Rust);
        let c = module_with_producers(&[("language", &["C11"])]);
        assert_eq!(Language::of(&c), Language::C);
        assert_eq!(Language::of(&module_with_producers(&[])), Language::Other);
        assert_eq!(Language::of(b"not wasm at all"), Language::Other);
    }
}
