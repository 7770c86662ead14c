//! `gatehouse import-nginx`: an nginx configuration in, a Gatehouse routes file and a report out.
//!
//! [`parse`] reads nginx's syntax (with `include`); [`translate`] maps what it understands onto
//! Gatehouse's model and accounts for *every* directive in the [`Report`]: translated,
//! approximated (with what differs), or left out (with why), each with its `file:line`;
//! [`emit`] writes the TOML. Nothing is dropped silently: a directive the translator did not
//! handle is reported as left out by a final sweep.

pub mod emit;
pub mod parse;
pub mod translate;

use std::fmt;
use std::path::Path;

/// How a directive was carried over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Translated,
    Approximated,
    LeftOut,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub at: String,
    pub directive: String,
    pub outcome: Outcome,
    pub note: String,
}

/// What happened to every directive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub entries: Vec<Entry>,
}

impl Report {
    pub fn count(&self, o: Outcome) -> usize {
        self.entries.iter().filter(|e| e.outcome == o).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (outcome, title) in [
            (
                Outcome::LeftOut,
                "left out (not in the output: decide what to do)",
            ),
            (
                Outcome::Approximated,
                "approximated (in the output, but it behaves differently)",
            ),
            (Outcome::Translated, "translated"),
        ] {
            let items: Vec<&Entry> = self
                .entries
                .iter()
                .filter(|e| e.outcome == outcome)
                .collect();
            if items.is_empty() {
                continue;
            }
            writeln!(f, "{title}:")?;
            for e in items {
                writeln!(f, "  {}: {}\n      {}", e.at, e.directive, e.note)?;
            }
        }
        writeln!(
            f,
            "{} translated, {} approximated, {} left out",
            self.count(Outcome::Translated),
            self.count(Outcome::Approximated),
            self.count(Outcome::LeftOut)
        )
    }
}

/// Imports `file` (with `include`s resolved against `prefix`, by default the file's folder).
pub fn import(file: &Path, prefix: Option<&Path>) -> Result<(String, Report), parse::ParseError> {
    let default_prefix = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let prefix = prefix.map(Path::to_path_buf).unwrap_or(default_prefix);
    let prefix = std::fs::canonicalize(&prefix).unwrap_or(prefix);
    let mut directives = parse::parse_file(file, &prefix)?;
    parse::relativize(&mut directives, &prefix);
    let model = translate::translate(&directives, &prefix);
    let shown = std::fs::canonicalize(file)
        .ok()
        .and_then(|f| f.strip_prefix(&prefix).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| file.to_path_buf());
    let toml = emit::emit(&model, &shown);
    Ok((toml, model.report))
}
