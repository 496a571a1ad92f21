//! The ClusterSPIFFEID template language: the subset of Go `text/template` that users write in
//! `spiffeIDTemplate`, `dnsNameTemplates` and `workloadSelectorTemplates`.
//!
//! Semantics follow Go with no custom functions (spire-controller-manager registers none) and the
//! default `missingkey` option: a missing map key reached through field syntax renders
//! `<no value>`, through `index` it is the element's zero value (`""` for the string maps that
//! labels and annotations are). A missing *struct* field is an error, as in Go.
//!
//! Parse once with [`Template::parse`], render many times with [`Template::render`].

mod exec;
mod lex;
mod parse;
mod reach;
mod value;

pub use reach::{FieldTree, Step};
pub use value::Value;

use std::fmt;

/// A position in the template source, 1-based, counted in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// Why a template failed to parse or to render.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template: {name}:{pos}: {message}")]
    Parse {
        name: String,
        pos: Pos,
        message: String,
    },
    #[error("template: {name}:{pos}: executing {name:?} at <{context}>: {message}")]
    Exec {
        name: String,
        pos: Pos,
        context: String,
        message: String,
    },
}

impl TemplateError {
    /// A stable, low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            TemplateError::Parse { .. } => "parse",
            TemplateError::Exec { .. } => "exec",
        }
    }

    pub fn pos(&self) -> Pos {
        match self {
            TemplateError::Parse { pos, .. } | TemplateError::Exec { pos, .. } => *pos,
        }
    }
}

/// A parsed template, ready to render against any number of data values.
#[derive(Debug, Clone)]
pub struct Template {
    name: String,
    source: String,
    nodes: Vec<parse::Node>,
}

impl Template {
    /// Parses `source`. `name` appears in error messages, as Go's template name does.
    pub fn parse(name: &str, source: &str) -> Result<Self, TemplateError> {
        let nodes = parse::parse(source).map_err(|(pos, message)| TemplateError::Parse {
            name: name.to_owned(),
            pos,
            message,
        })?;
        Ok(Self {
            name: name.to_owned(),
            source: source.to_owned(),
            nodes,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Adds to `tree` every part of the data this template can reach (see [`FieldTree`]).
    pub fn reach_into(&self, tree: &mut FieldTree) {
        reach::reach(&self.nodes, tree);
    }

    /// Renders the template with `data` as dot (and `$`).
    pub fn render(&self, data: &Value) -> Result<String, TemplateError> {
        exec::render(&self.nodes, data).map_err(|e| TemplateError::Exec {
            name: self.name.clone(),
            pos: e.pos,
            context: e.context,
            message: e.message,
        })
    }
}

#[cfg(test)]
mod reach_tests;
#[cfg(test)]
mod tests;
