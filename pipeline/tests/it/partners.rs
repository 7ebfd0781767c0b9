//! Partner configuration against a real database: applying the example partners creates their
//! rows, queues, dead-letter queues and circuit breakers; applying again updates in place.

use pipeline::partners::{self, PartnersFile};
use sqlx::PgPool;

fn example() -> PartnersFile {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/partners.yaml"))
        .expect("examples/partners.yaml");
    partners::parse_file(&text).expect("valid")
}

#[sqlx::test(migrations = false)]
async fn applying_partners_creates_queues_and_breakers_and_round_trips(pool: PgPool) {
    pipeline::db::migrate(&pool).await.expect("migrate");
    let mut file = example();
    let mut conn = pool.acquire().await.expect("connection");
    for partner in &file.partners {
        partners::apply(&mut conn, partner).await.expect("applied");
    }
    let n = file.partners.len() as i64;
    let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool);
    assert_eq!(count("SELECT count(*) FROM partners").await.expect("partners"), n);
    assert_eq!(count("SELECT count(*) FROM circuit_breakers WHERE state = 'closed'").await.expect("breakers"), n);
    assert_eq!(
        count("SELECT count(*) FROM pgmq.meta WHERE queue_name LIKE 'partner\\_%'").await.expect("queues"),
        2 * n
    );

    let mut stored = partners::load_all(&mut conn).await.expect("load");
    file.partners.sort_by(|a, b| a.name.cmp(&b.name));
    stored.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(stored, file.partners, "what is stored reads back as applied");

    // Applying again updates in place (and keeps the queues and breaker).
    let mut changed = file.partners[0].clone();
    changed.enabled = false;
    changed.max_retries = 7;
    partners::apply(&mut conn, &changed).await.expect("re-applied");
    let again = partners::load_all(&mut conn).await.expect("load");
    assert_eq!(again.iter().find(|p| p.name == changed.name), Some(&changed));
    assert_eq!(count("SELECT count(*) FROM partners").await.expect("partners"), n);
}
