//! Change impact in the admin API: `rulec diff` (`compiler::diff`) between two stored rules
//! documents, run on a blocking thread. The rules API returns it with every dry run (against
//! the rules of the active decision tree) and stores it with every saved version (against the
//! version before), so the history answers "what did version N change".

use compiler::diff::Side;
use pipeline::rules::RuleSetDoc;
use serde_json::{Value, json};

/// The impact of going from `from` to `to`, as `rulec diff --format json` gives it, or, when
/// either does not type-check (the save is refused for it anyway), why it cannot be computed.
pub(crate) async fn between(from: (&str, &RuleSetDoc), to: (&str, &RuleSetDoc)) -> Value {
    let (from_name, from_text) = (from.0.to_owned(), from.1.to_text());
    let (to_name, to_text) = (to.0.to_owned(), to.1.to_text());
    let run = move || -> Result<Value, String> {
        let old = Side::read(&from_name, from_text.as_bytes())
            .map_err(|_| format!("{from_name} has syntax or type errors; the impact cannot be computed"))?;
        let new = Side::read(&to_name, to_text.as_bytes())
            .map_err(|_| format!("{to_name} has syntax or type errors; the impact cannot be computed"))?;
        compiler::diff::diff(&old, &new).map(|d| d.to_json()).map_err(|e| format!("the diff could not run: {e}"))
    };
    match tokio::task::spawn_blocking(run).await {
        Ok(Ok(impact)) => impact,
        Ok(Err(why)) => json!({ "unavailable": why }),
        Err(error) => json!({ "unavailable": format!("the diff panicked: {error}") }),
    }
}
