//! The identify worker (DESIGN.md, "Identify"): reads `submissions`, finds or records the
//! person in the Lead Identity graph (`persons`), and forwards each lead to `routing` with
//! `person_id`, `alias_id`, its offer fields and the derived routing fields, without raw
//! personal data.
//!
//! Matching, per submission, on the normalized keys (`pipeline::identity`):
//! - a person matches when at least two of the submission's keys equal values the person is
//!   known by (across its main record and its aliases); a key the submission lacks neither
//!   matches nor differs;
//! - several match: the most matching keys wins, then the oldest (smallest main id); persons
//!   are never merged;
//! - a record (main first, then the oldest alias) whose values equal every key the submission
//!   has is reused; otherwise the keys become a new alias of the chosen person;
//! - no match: a new main record.
//!
//! A batch is decided in memory, in message order (a later submission sees the records an
//! earlier one created), after taking transaction-level advisory locks on every normalized key
//! of the batch in sorted order: two replicas whose submissions could affect each other share a
//! key, so one waits for the other's commit and then sees its records; sorting prevents deadlocks.

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use pipeline::consumer::{Envelope, Handler, Outcome, Output};
use pipeline::db::{advisory_key, lock_in_order};
use pipeline::identity::{Key, Keys, PhoneRegion};
use pipeline::message::{RoutingLead, Submission, derived};
use pipeline::queue::{self, QueueName};
use pipeline::telemetry::LeadSpans;
use serde_json::Value;
use sqlx::PgConnection;
use tracing::Instrument;

use crate::{Error, Result};

/// The identify handler.
pub struct Identify {
    region: PhoneRegion,
    routing: QueueName,
}

impl Identify {
    /// Reads phone numbers without a country code in `region`'s numbering plan.
    pub fn new(region: PhoneRegion) -> pipeline::Result<Self> {
        Ok(Self { region, routing: QueueName::new(queue::fixed::ROUTING)? })
    }
}

/// A record of the identity graph as the batch sees it. New records get negative ids
/// (`-1`, `-2`, ... in creation order) until the batch is written.
#[derive(Debug, Clone)]
struct Record {
    id: i64,
    main: i64,
    keys: Keys,
}

/// Creation order: every stored record is older than every record of this batch.
fn age(id: i64) -> (bool, i64) {
    (id < 0, id.abs())
}

/// The part of the identity graph one batch can touch, indexed by key value.
#[derive(Default)]
struct Graph {
    records: Vec<Record>,
    by_key: HashMap<(Key, String), Vec<usize>>,
    created: Vec<usize>,
}

/// What identify decided for one submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Identity {
    NewPerson(i64),
    Alias { person: i64, alias: i64 },
    Existing { person: i64, record: i64 },
}

impl Identity {
    fn person(self) -> i64 {
        match self {
            Identity::NewPerson(p) | Identity::Alias { person: p, .. } | Identity::Existing { person: p, .. } => p,
        }
    }

    fn alias(self) -> Option<i64> {
        match self {
            Identity::NewPerson(_) => None,
            Identity::Alias { alias, .. } => Some(alias),
            Identity::Existing { person, record } => (record != person).then_some(record),
        }
    }
}

impl Graph {
    fn add(&mut self, record: Record, created: bool) -> usize {
        let index = self.records.len();
        for key in Key::ALL {
            if let Some(value) = record.keys.get(key) {
                self.by_key.entry((key, value.to_owned())).or_default().push(index);
            }
        }
        self.records.push(record);
        if created {
            self.created.push(index);
        }
        index
    }

    fn create(&mut self, main: Option<i64>, keys: &Keys) -> i64 {
        let id = -(self.created.len() as i64) - 1;
        self.add(Record { id, main: main.unwrap_or(id), keys: keys.clone() }, true);
        id
    }

    /// Finds or records the person behind `keys`.
    fn identify(&mut self, keys: &Keys) -> Identity {
        // Per person: which of the submission's keys it is known by.
        let mut matched: HashMap<i64, u8> = HashMap::new();
        for (bit, key) in Key::ALL.into_iter().enumerate() {
            let Some(value) = keys.get(key) else { continue };
            for &r in self.by_key.get(&(key, value.to_owned())).map(Vec::as_slice).unwrap_or_default() {
                *matched.entry(self.records[r].main).or_default() |= 1 << bit;
            }
        }
        let best = matched
            .into_iter()
            .filter(|(_, mask)| mask.count_ones() >= 2)
            .min_by_key(|&(person, mask)| (std::cmp::Reverse(mask.count_ones()), age(person)));
        let Some((person, _)) = best else {
            return Identity::NewPerson(self.create(None, keys));
        };
        // A record of that person equal on every key the submission has: main first, then oldest.
        let equal = Key::ALL
            .into_iter()
            .find_map(|key| keys.get(key).map(|value| (key, value)))
            .and_then(|(key, value)| self.by_key.get(&(key, value.to_owned())))
            .into_iter()
            .flatten()
            .map(|&r| &self.records[r])
            .filter(|r| {
                r.main == person && Key::ALL.iter().all(|k| keys.get(*k).is_none_or(|v| r.keys.get(*k) == Some(v)))
            })
            .min_by_key(|r| (r.id != r.main, age(r.id)))
            .map(|r| r.id);
        match equal {
            Some(record) => Identity::Existing { person, record },
            None => Identity::Alias { person, alias: self.create(Some(person), keys) },
        }
    }
}

/// Sentry figures of one batch.
#[derive(Debug, Default)]
struct Tally {
    persons: usize,
    aliases: usize,
    reused: usize,
}

impl Handler for Identify {
    type Message = Submission;
    type Error = Error;

    async fn handle(&self, tx: &mut PgConnection, batch: &[Envelope<Submission>]) -> Result<Vec<Outcome>> {
        let span = tracing::info_span!("identify.batch", leads = batch.len());
        self.identify_batch(tx, batch).instrument(span).await
    }
}

impl Identify {
    async fn identify_batch(&self, tx: &mut PgConnection, batch: &[Envelope<Submission>]) -> Result<Vec<Outcome>> {
        let started = Instant::now();
        // Normalize; a submission without two usable keys can never be identified.
        let normalized: Vec<Result<Keys, String>> = batch
            .iter()
            .map(|m| {
                let s = &m.body;
                match Keys::normalize(s.email.as_deref(), s.full_name.as_deref(), s.phone.as_deref(), self.region) {
                    Ok(keys) if keys.count() >= 2 => Ok(keys),
                    Ok(_) => Err("fewer than two identity keys (email, full_name, phone)".to_owned()),
                    Err(errors) => Err(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")),
                }
            })
            .collect();
        let valid: Vec<&Keys> = normalized.iter().filter_map(|k| k.as_ref().ok()).collect();

        let locks = valid
            .iter()
            .flat_map(|k| Key::ALL.into_iter().filter_map(|key| k.get(key).map(|v| advisory_key(key.name(), v))))
            .collect();
        lock_in_order(tx, locks).await.map_err(Error::LockIdentityKeys)?;

        let mut graph = load(tx, &valid).await?;
        let times = derived_times(tx, batch.iter().map(|m| m.body.submitted_at).collect()).await?;

        let mut tally = Tally::default();
        let spans = LeadSpans::current();
        let identities: Vec<Result<(Identity, &Keys), String>> = normalized
            .iter()
            .zip(batch)
            .map(|(keys, message)| {
                let lead = spans.start("identify.lead", message.body.submission_id);
                lead.record("msg_id", message.msg_id);
                lead.record("site", message.body.site.as_str());
                let keys = keys.as_ref().map_err(|problem| {
                    lead.failed();
                    problem.clone()
                })?;
                let identity = graph.identify(keys);
                let found = match identity {
                    Identity::NewPerson(_) => {
                        tally.persons += 1;
                        "new_person"
                    }
                    Identity::Alias { .. } => {
                        tally.aliases += 1;
                        "new_alias"
                    }
                    Identity::Existing { .. } => {
                        tally.reused += 1;
                        "existing"
                    }
                };
                lead.record("identity", found);
                Ok((identity, keys))
            })
            .collect();

        let ids = store(tx, &graph).await?;
        let real = |id: i64| if id < 0 { ids[(-id - 1) as usize] } else { id };
        let now = Utc::now();
        let outcomes = identities
            .into_iter()
            .zip(batch)
            .zip(times)
            .map(|((identity, message), (hour, weekday))| match identity {
                Err(problem) => Ok(Outcome::DeadLetter(format!("cannot identify: {problem}"))),
                Ok((identity, keys)) => {
                    let s = &message.body;
                    let mut fields = s.fields.clone();
                    fields.insert(derived::SITE.to_owned(), Value::String(s.site.clone()));
                    if let Some(domain) = keys.email_domain() {
                        fields.insert(derived::EMAIL_DOMAIN.to_owned(), Value::String(domain.to_owned()));
                    }
                    fields.insert(derived::SUBMITTED_HOUR.to_owned(), Value::from(hour));
                    fields.insert(derived::SUBMITTED_WEEKDAY.to_owned(), Value::String(weekday));
                    let lead = RoutingLead {
                        submission_id: s.submission_id,
                        site: s.site.clone(),
                        person_id: real(identity.person()),
                        alias_id: identity.alias().map(real),
                        submitted_at: s.submitted_at,
                        fields,
                    };
                    sentry::metrics::distribution("identify.lead.latency", latency_ms(s.submitted_at, now))
                        .unit(sentry::protocol::Unit::Millisecond)
                        .capture();
                    Ok(Outcome::Done(vec![Output::new(self.routing.clone(), &lead)?]))
                }
            })
            .collect::<Result<Vec<_>, pipeline::Error>>()?;
        emit(&tally, batch.len(), started);
        Ok(outcomes)
    }
}

fn latency_ms(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e3
}

fn emit(tally: &Tally, leads: usize, started: Instant) {
    use sentry::metrics;
    use sentry::protocol::Unit;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    metrics::distribution("identify.batch.duration", elapsed_ms).unit(Unit::Millisecond).capture();
    metrics::distribution("identify.lead.duration", elapsed_ms / leads.max(1) as f64).unit(Unit::Millisecond).capture();
    metrics::counter("identify.persons.created", tally.persons as f64).capture();
    metrics::counter("identify.aliases.created", tally.aliases as f64).capture();
    metrics::counter("identify.records.reused", tally.reused as f64).capture();
    tracing::debug!(leads, ?tally, elapsed_ms, "identify batch decided");
}

/// Every stored record that shares a key value with the batch (which is every record a match or
/// a reuse can involve: a person is known by a value only through a record holding it).
async fn load(tx: &mut PgConnection, batch: &[&Keys]) -> Result<Graph> {
    let column = |key: Key| -> Vec<&str> { batch.iter().filter_map(|k| k.get(key)).collect() };
    #[derive(sqlx::FromRow)]
    struct Row {
        id: i64,
        main: i64,
        email: Option<String>,
        full_name: Option<String>,
        phone: Option<String>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        // One index lookup per value: the LATERAL subquery with `OFFSET 0` cannot be turned
        // into a hash join over a scan of the whole table, which the planner prefers for
        // arrays of a hundred values although the lookups are far cheaper on a warm cache.
        "SELECT p.* FROM unnest($1::text[]) AS v(value), LATERAL (SELECT id, coalesce(alias_of, id) AS main, email, full_name, phone FROM persons WHERE email = v.value OFFSET 0) p
         UNION SELECT p.* FROM unnest($2::text[]) AS v(value), LATERAL (SELECT id, coalesce(alias_of, id) AS main, email, full_name, phone FROM persons WHERE full_name = v.value OFFSET 0) p
         UNION SELECT p.* FROM unnest($3::text[]) AS v(value), LATERAL (SELECT id, coalesce(alias_of, id) AS main, email, full_name, phone FROM persons WHERE phone = v.value OFFSET 0) p",
    )
    .bind(column(Key::Email))
    .bind(column(Key::FullName))
    .bind(column(Key::Phone))
    // Planned afresh every time: a plan cached while `persons` was small (a seq scan per
    // value) would stay in use on a pooled connection long after the table has grown.
    .persistent(false)
    .fetch_all(&mut *tx)
    .await
    .map_err(Error::ReadPersons)?;
    let mut graph = Graph::default();
    for Row { id, main, email, full_name, phone } in rows {
        graph.add(Record { id, main, keys: Keys { email, full_name, phone } }, false);
    }
    Ok(graph)
}

/// Writes the batch's new records; returns their ids, indexed by `-placeholder - 1`.
async fn store(tx: &mut PgConnection, graph: &Graph) -> Result<Vec<i64>> {
    if graph.created.is_empty() {
        return Ok(Vec::new());
    }
    // Ids from the identity sequence, in creation order, so "oldest" stays "smallest id".
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT nextval(pg_get_serial_sequence('persons', 'id')) FROM generate_series(1, $1) ORDER BY 1",
    )
    .bind(graph.created.len() as i64)
    .fetch_all(&mut *tx)
    .await
    .map_err(Error::AllocatePersonIds)?;
    let real = |id: i64| if id < 0 { ids[(-id - 1) as usize] } else { id };
    let records: Vec<&Record> = graph.created.iter().map(|&i| &graph.records[i]).collect();
    let column = |key: Key| -> Vec<Option<&str>> { records.iter().map(|r| r.keys.get(key)).collect() };
    let alias_of: Vec<Option<i64>> = records.iter().map(|r| (r.id != r.main).then(|| real(r.main))).collect();
    sqlx::query(
        "INSERT INTO persons (id, email, full_name, phone, alias_of) OVERRIDING SYSTEM VALUE
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[])",
    )
    .bind(records.iter().map(|r| real(r.id)).collect::<Vec<_>>())
    .bind(column(Key::Email))
    .bind(column(Key::FullName))
    .bind(column(Key::Phone))
    .bind(alias_of)
    .execute(&mut *tx)
    .await
    .map_err(Error::RecordPersons)?;
    Ok(ids)
}

/// `submitted_hour` and `submitted_weekday` of each time, in the rule set's time zone (Postgres's
/// time-zone database, so the router and the rule set agree on daylight saving).
async fn derived_times(tx: &mut PgConnection, times: Vec<DateTime<Utc>>) -> Result<Vec<(i32, String)>> {
    let rows: Vec<(i32, String)> = sqlx::query_as(
        "SELECT extract(hour FROM u.t AT TIME ZONE z.tz)::int, lower(to_char(u.t AT TIME ZONE z.tz, 'Dy'))
         FROM unnest($1::timestamptz[]) WITH ORDINALITY AS u(t, n)
         CROSS JOIN (SELECT coalesce((SELECT timezone FROM rule_set), 'UTC') AS tz) z
         ORDER BY u.n",
    )
    .bind(times)
    .fetch_all(&mut *tx)
    .await
    .map_err(Error::DeriveTimes)?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(email: Option<&str>, name: Option<&str>, phone: Option<&str>) -> Keys {
        Keys { email: email.map(Into::into), full_name: name.map(Into::into), phone: phone.map(Into::into) }
    }

    #[test]
    fn in_memory_decisions() {
        let mut graph = Graph::default();
        let ann = keys(Some("ann@x.com"), Some("ann"), Some("+1"));
        assert_eq!(graph.identify(&ann), Identity::NewPerson(-1));
        assert_eq!(graph.identify(&ann), Identity::Existing { person: -1, record: -1 });
        let variant = keys(Some("ann@x.com"), Some("ann"), Some("+2"));
        assert_eq!(graph.identify(&variant), Identity::Alias { person: -1, alias: -2 });
        assert_eq!(graph.identify(&variant), Identity::Existing { person: -1, record: -2 });
        // Email from the main record, phone from the alias: still two keys of one person.
        let mixed = keys(Some("ann@x.com"), Some("annie"), Some("+2"));
        assert_eq!(graph.identify(&mixed), Identity::Alias { person: -1, alias: -3 });
        // Lacking a key neither matches nor differs: the main record is equal on what it has.
        assert_eq!(
            graph.identify(&keys(Some("ann@x.com"), Some("ann"), None)),
            Identity::Existing { person: -1, record: -1 }
        );
        assert_eq!(graph.identify(&keys(Some("ann@x.com"), None, Some("+9"))), Identity::NewPerson(-4));
        assert!(age(5) < age(-1) && age(-1) < age(-2));
    }

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        let lock_key = |key: Key, value: &str| advisory_key(key.name(), value);
        assert_eq!(lock_key(Key::Email, "a@b.co"), lock_key(Key::Email, "a@b.co"));
        assert_ne!(lock_key(Key::Email, "x"), lock_key(Key::Phone, "x"));
    }
}
