//! `offer-router rules load FILE`: puts a rules file into the `rules` table (the service's
//! authoritative rule set), refusing files with syntax or type errors the way `rulec check`
//! reports them; the compile worker then compiles and activates it. Also used by `serve
//! --seed-rules` on a database whose rule set is still empty.

use std::path::Path;

use anyhow::{Context, bail};
use compiler::finding::Code;
use pipeline::rules::RuleSetDoc;
use sqlx::PgPool;

/// What a load did.
pub(crate) struct Loaded {
    pub(crate) version: i64,
    pub(crate) rules: usize,
    pub(crate) errors: usize,
    pub(crate) warnings: usize,
}

/// Checks `file` and, unless `dry_run`, replaces the stored rule set with it.
pub(crate) async fn load_file(pool: &PgPool, file: &Path, dry_run: bool) -> anyhow::Result<Loaded> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read `{}`", file.display()))?;
    let name = file.display().to_string();
    let report = {
        let (name, bytes) = (name.clone(), bytes.clone());
        tokio::task::spawn_blocking(move || compiler::report::check(&name, &bytes)).await??
    };
    let invalid = report.findings.iter().any(|f| matches!(f.code, Code::Syntax | Code::Type));
    if invalid {
        eprint!("{}", report.to_human(false));
        bail!("`{name}` has syntax or type errors; nothing was loaded");
    }
    let text = std::str::from_utf8(&bytes).context("the file is not UTF-8")?;
    let (document, _) = compiler::syntax::document::read(text);
    let doc: RuleSetDoc =
        serde_json::from_value(document.to_json()).context("the rules file does not fit the stored shape")?;
    let loaded =
        |version| Loaded { version, rules: doc.rules.len(), errors: report.errors(), warnings: report.warnings() };
    if dry_run {
        return Ok(loaded(pipeline::rules::version(pool).await?));
    }
    let mut tx = pool.begin().await?;
    let version = pipeline::rules::replace(&mut tx, &doc).await.context("storing the rule set")?;
    tx.commit().await?;
    Ok(loaded(version))
}
