//! A small RFC 4180 reader and writer: comma-separated fields, `"`-quoted fields that may hold
//! commas, quotes (doubled) and line breaks, records ending in `\n` or `\r\n`.

use std::fmt;

/// One record and the line it starts on (1-based).
#[derive(Debug, PartialEq, Eq)]
pub struct Record {
    pub line: usize,
    pub fields: Vec<String>,
}

/// Text that is not CSV.
#[derive(Debug, PartialEq, Eq)]
pub struct SyntaxError {
    /// The line the problem is on (1-based).
    pub line: usize,
    pub message: &'static str,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// The records of `text`, skipping empty lines. A leading byte-order mark is ignored.
pub fn parse(text: &str) -> Result<Vec<Record>, SyntaxError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while chars.peek().is_some() {
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted_any = false;
        loop {
            // At the start of a field.
            if chars.peek() == Some(&'"') {
                chars.next();
                quoted_any = true;
                let quote_line = line;
                loop {
                    match chars.next() {
                        None => {
                            return Err(SyntaxError {
                                line: quote_line,
                                message: "a quoted field is not closed",
                            });
                        }
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            field.push('"');
                        }
                        Some('"') => break,
                        Some(c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            field.push(c);
                        }
                    }
                }
                match chars.peek() {
                    None | Some(',' | '\n' | '\r') => {}
                    Some(_) => {
                        return Err(SyntaxError {
                            line,
                            message: "a closing quote is followed by more text in the field",
                        });
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' || c == '\n' || (c == '\r' && crlf(&chars)) {
                        break;
                    }
                    field.push(c);
                    chars.next();
                }
            }
            fields.push(std::mem::take(&mut field));
            match chars.next() {
                Some(',') => continue,
                Some('\r') => {
                    // '\r\n', or after a quoted field a lone '\r': the record ends either way.
                    if chars.next_if_eq(&'\n').is_some() {
                        line += 1;
                    }
                    break;
                }
                Some('\n') => {
                    line += 1;
                    break;
                }
                Some(_) | None => break,
            }
        }
        let empty_line = fields.len() == 1 && fields[0].is_empty() && !quoted_any;
        if !empty_line {
            records.push(Record {
                line: start,
                fields,
            });
        }
    }
    Ok(records)
}

/// Whether the '\r' the iterator is at is followed by '\n'.
fn crlf(chars: &std::iter::Peekable<std::str::Chars<'_>>) -> bool {
    let mut ahead = chars.clone();
    ahead.next();
    ahead.peek() == Some(&'\n')
}

/// Appends `fields` as one CSV record (with `\r\n`), quoting fields that need it.
pub fn write_record<S: AsRef<str>>(out: &mut String, fields: &[S]) {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let field = field.as_ref();
        if field.contains([',', '"', '\r', '\n']) {
            out.push('"');
            out.push_str(&field.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(field);
        }
    }
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Vec<(usize, Vec<String>)> {
        let records = parse(text).expect("valid CSV");
        records.into_iter().map(|r| (r.line, r.fields)).collect()
    }

    fn rec(line: usize, fields: &[&str]) -> (usize, Vec<String>) {
        (line, fields.iter().map(|f| f.to_string()).collect())
    }

    #[test]
    fn plain_records() {
        assert_eq!(
            fields("a,b,c\n1,2,3\n"),
            [rec(1, &["a", "b", "c"]), rec(2, &["1", "2", "3"])]
        );
        assert_eq!(
            fields("a,b\r\n1,\r\n"),
            [rec(1, &["a", "b"]), rec(2, &["1", ""])]
        );
        assert_eq!(fields("a\n\n\nb"), [rec(1, &["a"]), rec(4, &["b"])]);
        assert_eq!(fields("\u{feff}a,b"), [rec(1, &["a", "b"])]);
        assert!(fields("").is_empty());
        assert_eq!(fields("a\rb,c"), [rec(1, &["a\rb", "c"])]);
    }

    #[test]
    fn quoted_fields() {
        assert_eq!(
            fields("\"a,b\",\"say \"\"hi\"\"\",c\n"),
            [rec(1, &["a,b", "say \"hi\"", "c"])]
        );
        assert_eq!(
            fields("\"two\nlines\",x\nnext,y"),
            [rec(1, &["two\nlines", "x"]), rec(3, &["next", "y"])]
        );
        assert_eq!(fields("\"\"\n"), [rec(1, &[""])]);
        assert_eq!(fields("a,\"\"\r\n"), [rec(1, &["a", ""])]);
    }

    #[test]
    fn syntax_errors() {
        assert_eq!(
            parse("a\n\"open,b\nc"),
            Err(SyntaxError {
                line: 2,
                message: "a quoted field is not closed"
            })
        );
        assert_eq!(
            parse("a\n\"x\"y,b").map(|_| ()),
            Err(SyntaxError {
                line: 2,
                message: "a closing quote is followed by more text in the field"
            })
        );
    }

    #[test]
    fn writing_quotes_when_needed() {
        let mut out = String::new();
        write_record(&mut out, &["row", "a,b", "say \"hi\"", ""]);
        assert_eq!(out, "row,\"a,b\",\"say \"\"hi\"\"\",\r\n");
    }
}
