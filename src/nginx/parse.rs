//! An nginx configuration parser: directives, blocks, and `include` (globs too), each directive
//! remembering its `file:line` for the import report.
//!
//! nginx's grammar is small: a directive is words up to `;`, or words then a `{ ... }` block.
//! Words may be quoted with `'` or `"` (with `\` escapes) and `#` starts a comment. Relative
//! `include` paths resolve against the prefix (nginx's `-p`, by default the main file's folder).

use std::path::{Path, PathBuf};

/// One argument, and whether it was quoted (`""` is an empty argument, not a missing one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    pub text: String,
    pub quoted: bool,
}

/// A directive with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<Arg>,
    pub block: Option<Vec<Directive>>,
    pub file: PathBuf,
    pub line: usize,
}

impl Directive {
    pub fn arg(&self, i: usize) -> Option<&str> {
        self.args.get(i).map(|a| a.text.as_str())
    }

    /// `file:line`, for the report.
    pub fn at(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }

    /// The directive as written, on one line (`location /api`).
    pub fn head(&self) -> String {
        let mut s = self.name.clone();
        for a in &self.args {
            s.push(' ');
            if a.quoted || a.text.is_empty() || a.text.contains(char::is_whitespace) {
                s.push('"');
                s.push_str(
                    &a.text
                        .replace('\\', "\\\\")
                        .replace('\n', "\\n")
                        .replace('"', "\\\""),
                );
                s.push('"');
            } else {
                s.push_str(&a.text);
            }
        }
        s
    }

    pub fn children(&self) -> &[Directive] {
        self.block.as_deref().unwrap_or(&[])
    }
}

/// A parse error with its position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {message}", file.display())]
pub struct ParseError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(Arg),
    Semi,
    Open,
    Close,
}

fn lex(text: &str, file: &Path) -> Result<Vec<(Token, usize)>, ParseError> {
    let err = |line, message: &str| ParseError {
        file: file.to_path_buf(),
        line,
        message: message.into(),
    };
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(&c) = chars.peek() {
        match c {
            '\n' => {
                line += 1;
                chars.next();
            }
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => {
                while let Some(&c) = chars.peek() {
                    if c == '\n' {
                        break;
                    }
                    chars.next();
                }
            }
            ';' => {
                out.push((Token::Semi, line));
                chars.next();
            }
            '{' => {
                out.push((Token::Open, line));
                chars.next();
            }
            '}' => {
                out.push((Token::Close, line));
                chars.next();
            }
            '"' | '\'' => {
                let quote = c;
                let start = line;
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err(err(start, "unterminated quoted string")),
                        Some('\\') => match chars.next() {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some('r') => s.push('\r'),
                            Some(c) if c == quote || c == '\\' => s.push(c),
                            Some(c) => {
                                s.push('\\');
                                s.push(c);
                            }
                            None => return Err(err(start, "unterminated quoted string")),
                        },
                        Some(c) if c == quote => break,
                        Some(c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            s.push(c);
                        }
                    }
                }
                out.push((
                    Token::Word(Arg {
                        text: s,
                        quoted: true,
                    }),
                    start,
                ));
            }
            _ => {
                let mut s = String::new();
                let mut brace_depth = 0;
                while let Some(&c) = chars.peek() {
                    // `${var}` keeps its braces inside a word.
                    if c == '{' && s.ends_with('$') {
                        brace_depth += 1;
                    } else if c == '}' && brace_depth > 0 {
                        brace_depth -= 1;
                    } else if c.is_whitespace() || c == ';' || c == '{' || c == '}' {
                        break;
                    }
                    if c == '\\' {
                        // As nginx: \" \' \\ are the character, \t \r \n control characters,
                        // anything else keeps its backslash (regexes rely on it).
                        chars.next();
                        match chars.next() {
                            Some(n @ ('"' | '\'' | '\\')) => s.push(n),
                            Some('t') => s.push('\t'),
                            Some('r') => s.push('\r'),
                            Some('n') => s.push('\n'),
                            Some(n) => {
                                s.push('\\');
                                s.push(n);
                            }
                            None => s.push('\\'),
                        }
                        continue;
                    }
                    s.push(c);
                    chars.next();
                }
                out.push((
                    Token::Word(Arg {
                        text: s,
                        quoted: false,
                    }),
                    line,
                ));
            }
        }
    }
    Ok(out)
}

/// Parses the file at `path`, following `include`s relative to `prefix`.
pub fn parse_file(path: &Path, prefix: &Path) -> Result<Vec<Directive>, ParseError> {
    let mut seen = Vec::new();
    parse_file_inner(path, prefix, &mut seen)
}

fn parse_file_inner(
    path: &Path,
    prefix: &Path,
    seen: &mut Vec<PathBuf>,
) -> Result<Vec<Directive>, ParseError> {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if seen.contains(&canonical) {
        return Err(ParseError {
            file: path.to_path_buf(),
            line: 0,
            message: "includes itself".into(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| ParseError {
        file: path.to_path_buf(),
        line: 0,
        message: format!("cannot read: {e}"),
    })?;
    seen.push(canonical);
    let tokens = lex(&text, path)?;
    let mut pos = 0;
    let out = block(&tokens, &mut pos, path, prefix, seen, false)?;
    seen.pop();
    Ok(out)
}

fn block(
    tokens: &[(Token, usize)],
    pos: &mut usize,
    file: &Path,
    prefix: &Path,
    seen: &mut Vec<PathBuf>,
    nested: bool,
) -> Result<Vec<Directive>, ParseError> {
    let mut out = Vec::new();
    let err = |line, message: String| ParseError {
        file: file.to_path_buf(),
        line,
        message,
    };
    while *pos < tokens.len() {
        let (tok, line) = &tokens[*pos];
        match tok {
            Token::Close => {
                if !nested {
                    return Err(err(*line, "unexpected \"}\"".into()));
                }
                *pos += 1;
                return Ok(out);
            }
            Token::Semi => return Err(err(*line, "unexpected \";\"".into())),
            Token::Open => return Err(err(*line, "unexpected \"{\"".into())),
            Token::Word(name) => {
                let line = *line;
                *pos += 1;
                let mut args = Vec::new();
                loop {
                    match tokens.get(*pos) {
                        Some((Token::Word(a), _)) => {
                            args.push(a.clone());
                            *pos += 1;
                        }
                        Some((Token::Semi, _)) => {
                            *pos += 1;
                            if name.text == "include" {
                                for a in &args {
                                    out.extend(include(&a.text, file, line, prefix, seen)?);
                                }
                            } else {
                                out.push(Directive {
                                    name: name.text.clone(),
                                    args,
                                    block: None,
                                    file: file.to_path_buf(),
                                    line,
                                });
                            }
                            break;
                        }
                        Some((Token::Open, _)) => {
                            *pos += 1;
                            let children = block(tokens, pos, file, prefix, seen, true)?;
                            out.push(Directive {
                                name: name.text.clone(),
                                args,
                                block: Some(children),
                                file: file.to_path_buf(),
                                line,
                            });
                            break;
                        }
                        Some((Token::Close, l)) => {
                            return Err(err(
                                *l,
                                format!("directive \"{}\" is not terminated by \";\"", name.text),
                            ));
                        }
                        None => {
                            return Err(err(
                                line,
                                format!(
                                    "unexpected end of file: directive \"{}\" has no \";\"",
                                    name.text
                                ),
                            ));
                        }
                    }
                }
            }
        }
    }
    if nested {
        return Err(err(
            tokens.last().map(|t| t.1).unwrap_or(0),
            "unexpected end of file, expecting \"}\"".into(),
        ));
    }
    Ok(out)
}

fn include(
    pattern: &str,
    from: &Path,
    line: usize,
    prefix: &Path,
    seen: &mut Vec<PathBuf>,
) -> Result<Vec<Directive>, ParseError> {
    let full = if Path::new(pattern).is_absolute() {
        PathBuf::from(pattern)
    } else {
        prefix.join(pattern)
    };
    let err = |message: String| ParseError {
        file: from.to_path_buf(),
        line,
        message,
    };
    let has_glob = pattern.contains(['*', '?', '[']);
    let mut files: Vec<PathBuf> = if has_glob {
        glob::glob(&full.to_string_lossy())
            .map_err(|e| err(format!("include {pattern}: bad pattern: {e}")))?
            .filter_map(Result::ok)
            .collect()
    } else {
        if !full.exists() {
            return Err(err(format!(
                "include {pattern}: {} does not exist",
                full.display()
            )));
        }
        vec![full]
    };
    files.sort();
    let mut out = Vec::new();
    for f in files {
        out.extend(parse_file_inner(&f, prefix, seen)?);
    }
    Ok(out)
}

/// Rewrites every directive's file to be relative to `base` where it is inside it (so reports
/// and comments read `conf.d/a.conf:3`, not an absolute path).
pub fn relativize(ds: &mut [Directive], base: &Path) {
    for d in ds {
        let abs = std::fs::canonicalize(&d.file).unwrap_or_else(|_| d.file.clone());
        if let Ok(rel) = abs.strip_prefix(base) {
            d.file = rel.to_path_buf();
        }
        if let Some(b) = d.block.as_mut() {
            relativize(b, base);
        }
    }
}

/// Parses text (for tests).
pub fn parse_str(text: &str) -> Result<Vec<Directive>, ParseError> {
    let file = Path::new("nginx.conf");
    let tokens = lex(text, file)?;
    let mut pos = 0;
    block(
        &tokens,
        &mut pos,
        file,
        Path::new("."),
        &mut Vec::new(),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_blocks_and_lines() {
        let d =
            parse_str("worker_processes 1;\nhttp {\n  server {\n    listen 80;\n  }\n}\n").unwrap();
        assert_eq!(d[0].name, "worker_processes");
        assert_eq!(d[1].line, 2);
        let server = &d[1].children()[0];
        assert_eq!(server.children()[0].head(), "listen 80");
        assert_eq!(server.children()[0].line, 4);
    }

    #[test]
    fn quotes_escapes_and_comments() {
        let d = parse_str("add_header X-A \"a b; c\" always; # comment ; {\nreturn 200 'it\\'s';")
            .unwrap();
        assert_eq!(d[0].arg(1), Some("a b; c"));
        assert!(d[0].args[1].quoted);
        assert_eq!(d[1].arg(1), Some("it's"));
    }

    #[test]
    fn variables_with_braces_stay_in_one_word() {
        let d = parse_str("return 301 https://${host}$request_uri;").unwrap();
        assert_eq!(d[0].arg(1), Some("https://${host}$request_uri"));
    }

    #[test]
    fn regex_locations_keep_their_pattern() {
        let d = parse_str("location ~* \\.(css|js)$ { expires 1d; }").unwrap();
        assert_eq!(d[0].args.len(), 2);
        assert_eq!(d[0].arg(1), Some("\\.(css|js)$"));
    }

    #[test]
    fn errors_have_positions() {
        assert_eq!(parse_str("a 1;\nb 2\n}").unwrap_err().line, 3);
        assert!(
            parse_str("http {\n listen 80;\n")
                .unwrap_err()
                .message
                .contains("expecting \"}\"")
        );
        assert!(parse_str("a \"unterminated").is_err());
    }
}
