//! `offer-router partners apply FILE | list` and `offer-router mock-partners`: partner
//! configuration from a YAML file into `partners` (with queues and breakers), and the mock
//! partner server for the demo.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use sqlx::PgPool;

/// Applies every partner of `file`; prints what it did.
pub(crate) async fn apply(pool: &PgPool, file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read `{}`", file.display()))?;
    let parsed = pipeline::partners::parse_file(&text).with_context(|| format!("in `{}`", file.display()))?;
    let mut tx = pool.begin().await?;
    for partner in &parsed.partners {
        pipeline::partners::apply(&mut tx, partner).await.with_context(|| format!("applying `{}`", partner.name))?;
    }
    tx.commit().await?;
    println!("applied {} partners from {}", parsed.partners.len(), file.display());
    Ok(())
}

/// Prints every partner with its circuit state.
pub(crate) async fn list(pool: &PgPool, json: bool) -> anyhow::Result<()> {
    let partners = pipeline::partners::load_all(&mut *pool.acquire().await?).await?;
    let states = pipeline::partners::circuits(pool).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&partners)?);
        return Ok(());
    }
    println!("{:<32} {:>8} {:>10} {:>8} circuit", "partner", "enabled", "dedupe", "retries");
    for p in partners {
        let circuit = states.iter().find(|(n, _)| *n == p.name).map_or("-", |(_, s)| s.as_str());
        let dedupe = format!("{}d", p.dedupe_window_days);
        println!("{:<32} {:>8} {:>10} {:>8} {circuit}", p.name, p.enabled, dedupe, p.max_retries);
    }
    Ok(())
}

/// Serves the mock partners on `addr` until Ctrl-C.
pub(crate) async fn mock(addr: SocketAddr) -> anyhow::Result<()> {
    let mock = workers::mock_partner::MockPartner::start(addr).await.with_context(|| format!("binding {addr}"))?;
    println!("mock partners on http://{} (POST /partners/<route>/leads; PUT /control/<route> to switch)", mock.addr());
    // Until Ctrl-C or SIGTERM, as the daemon.
    crate::serve::cancel_on_signal(tokio_util::sync::CancellationToken::new()).await;
    mock.shutdown().await;
    Ok(())
}
