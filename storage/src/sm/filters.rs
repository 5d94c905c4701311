//! Registered filters as apply evaluates them: name, id and the parsed predicate.
//!
//! The registry is replicated state: a filter's text is parsed at apply (so every replica
//! refuses the same bad expression), stored in canonical form, and re-parsed on open. Ids
//! are the log index of the registration, so they are unique for the group's lifetime and
//! a filter re-created under an old name never inherits old counters.

use adclick_proto::filter::{Filter, FilterName};
use adclick_proto::model::Click;

use super::format::FilterRecord;

/// A registered filter, compiled.
#[derive(Debug, Clone)]
pub struct ActiveFilter {
    /// Its id (registration log index).
    pub id: u64,
    /// Its name.
    pub name: String,
    predicate: Filter,
}

impl ActiveFilter {
    /// Whether `click` counts for this filter.
    pub fn matches(&self, click: &Click) -> bool {
        self.predicate.matches(click)
    }
}

/// Validates a new registration: the name and the expression. Returns the canonical
/// expression text, or why the registration is refused.
pub fn compile(name: &str, expr: &str, id: u64) -> Result<(ActiveFilter, FilterRecord), String> {
    let name = FilterName::new(name).map_err(|e| format!("bad filter name: {e}"))?;
    let predicate = Filter::parse(expr).map_err(|e| format!("bad filter expression: {e}"))?;
    let canonical = predicate.to_string();
    Ok((
        ActiveFilter {
            id,
            name: name.as_str().to_owned(),
            predicate,
        },
        FilterRecord {
            id,
            expr: canonical,
        },
    ))
}

/// Re-compiles a stored registration (on open or snapshot install).
pub fn reload(name: &str, record: &FilterRecord) -> Result<ActiveFilter, String> {
    compile(name, &record.expr, record.id).map(|(f, _)| f)
}
