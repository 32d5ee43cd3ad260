//! Loading a scenario file: TOML through the schema, then validation, every error with the
//! file, line and column it is about.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use crate::schema::Scenario;

/// Why a scenario could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {what}: {message}")]
pub struct LoadError {
    /// The file (as given).
    pub file: String,
    /// Line, from 1 (0 when the error is about the file as a whole).
    pub line: usize,
    /// Column, from 1 (0 when the error is about the file as a whole).
    pub column: usize,
    /// The class of error.
    pub what: ErrorClass,
    /// What is wrong and what was expected (valid names are listed).
    pub message: String,
}

/// The classes of loading errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The file could not be read.
    Io,
    /// Not TOML, or not the schema (unknown key, unknown name, wrong type, missing key).
    Syntax,
    /// A well-formed scenario that cannot run (more memory than the machine, a driver on a
    /// missing process, …): rejected before it runs.
    Impossible,
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorClass::Io => "cannot read",
            ErrorClass::Syntax => "error",
            ErrorClass::Impossible => "impossible scenario",
        })
    }
}

/// A loaded and validated scenario, with its source (to locate later messages).
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The file (as given).
    pub file: String,
    /// The scenario.
    pub scenario: Scenario,
    source: String,
}

impl Loaded {
    /// `(line, column)` of a byte span of the source, from 1.
    pub fn position(&self, span: &Range<usize>) -> (usize, usize) {
        position(&self.source, span.start)
    }
}

/// `(line, column)` of byte `offset` in `source`, from 1 (columns count characters).
pub fn position(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let mut at = offset;
    while !source.is_char_boundary(at) {
        at -= 1;
    }
    let before = &source[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Reads, parses and validates a scenario file.
pub fn load_file(path: &Path) -> Result<Loaded, LoadError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| LoadError {
        file: file.clone(),
        line: 0,
        column: 0,
        what: ErrorClass::Io,
        message: e.to_string(),
    })?;
    load_str(&file, &text)
}

/// Parses and validates scenario text; `file` names it in errors.
pub fn load_str(file: &str, text: &str) -> Result<Loaded, LoadError> {
    let scenario: Scenario = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((0, 0), |s| position(text, s.start));
        LoadError {
            file: file.to_owned(),
            line,
            column,
            what: ErrorClass::Syntax,
            message: e.message().trim_end().to_owned(),
        }
    })?;
    let loaded = Loaded {
        file: file.to_owned(),
        scenario,
        source: text.to_owned(),
    };
    crate::validate::validate(&loaded.scenario).map_err(|(span, message)| {
        let (line, column) = span.map_or((0, 0), |s| loaded.position(&s));
        LoadError {
            file: file.to_owned(),
            line,
            column,
            what: ErrorClass::Impossible,
            message,
        }
    })?;
    Ok(loaded)
}
