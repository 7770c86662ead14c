//! Diagnostics for the routes file: every problem carries `file:line:column`, the key it is about,
//! what is wrong, and what to do about it.
//!
//! The config builder collects these instead of stopping at the first one, so `gatehouse check`
//! shows every mistake in one run (nginx stops at the first; operators hate the edit-check loop).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// How bad a diagnostic is. Warnings never block a load; errors always do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no position (a missing file, an empty file).
    pub line: usize,
    pub column: usize,
    /// The key path, e.g. `site[0].route[1].upstream`, so the reader can find it without the line.
    pub key: String,
    pub message: String,
    /// What to do about it.
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        write!(f, ": {sev}: ")?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Collects diagnostics for one file, turning byte spans into line and column.
pub struct Collector<'a> {
    file: PathBuf,
    text: &'a str,
    pub items: Vec<Diagnostic>,
}

impl<'a> Collector<'a> {
    pub fn new(file: &Path, text: &'a str) -> Self {
        Collector {
            file: file.to_path_buf(),
            text,
            items: Vec::new(),
        }
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Records an error at `span` (a byte range of the file).
    pub fn error(
        &mut self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        self.push(Severity::Error, span, key.into(), message.into(), help);
    }

    /// Records a warning at `span`.
    pub fn warn(
        &mut self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        self.push(Severity::Warning, span, key.into(), message.into(), help);
    }

    fn push(
        &mut self,
        severity: Severity,
        span: Option<Range<usize>>,
        key: String,
        message: String,
        help: Option<String>,
    ) {
        let (line, column) = span.map(|s| line_col(self.text, s.start)).unwrap_or((0, 0));
        self.items.push(Diagnostic {
            severity,
            file: self.file.clone(),
            line,
            column,
            key,
            message,
            help,
        });
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_is_one_based() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 11), (2, 6));
    }

    #[test]
    fn line_col_counts_characters_not_bytes() {
        let text = "é = \"x\"";
        assert_eq!(line_col(text, "é = ".len()), (1, 5));
    }

    #[test]
    fn display_names_file_position_key_and_help() {
        let d = Diagnostic {
            severity: Severity::Error,
            file: "/etc/g.toml".into(),
            line: 3,
            column: 7,
            key: "site[0].hosts".into(),
            message: "is empty".into(),
            help: Some("list at least one host".into()),
        };
        assert_eq!(
            d.to_string(),
            "/etc/g.toml:3:7: error: site[0].hosts: is empty\n  help: list at least one host"
        );
    }
}
