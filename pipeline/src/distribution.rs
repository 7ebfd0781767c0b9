//! Lead distribution as the partners' configuration says it: how many leads a partner takes
//! per day, week, month or in total (caps, also per rule, and spend budgets at a price per
//! lead), when it takes them (a weekly schedule with exceptions, in its time zone), and the
//! state every router and deliver replica shares to enforce it: cap counters (`cap_usage`) and
//! the positions of weighted splits (`split_state`), locked and updated in the batch's
//! transaction so that no replica ever takes a lead over a cap.
//!
//! Periods are the partner's local calendar: the day, the ISO week (from Monday), the month,
//! and "total" (since the partner was configured). A reservation counts a lead against every
//! period of the partner's caps and budget, and of its cap for the deciding rule when it has
//! one; deliver gives it back when the lead turns out to be a duplicate it never sends.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sqlx::PgConnection;

use crate::Result;

/// Where the time comes from: the system clock in the service, a driven one in tests.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

// ---- money ---------------------------------------------------------------------------------

/// An amount of money in cents: written `25.00` or `"25.00"` (at most two decimals), never a
/// float inside.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cents(pub i64);

impl Cents {
    /// Reads `12`, `12.5` or `12.50`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || fraction.len() > 2 {
            return None;
        }
        if !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let cents = format!("{fraction:0<2}").parse::<i64>().ok()?;
        whole.parse::<i64>().ok()?.checked_mul(100)?.checked_add(cents).map(Self)
    }
}

impl fmt::Display for Cents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

impl Serialize for Cents {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Cents {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        let text = match &value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => String::new(),
        };
        Self::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("`{value}` is not an amount (at most two decimals, e.g. \"25.00\")"))
        })
    }
}

// ---- periods and limits --------------------------------------------------------------------

/// A cap period, in the partner's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// The local day.
    Day,
    /// The local ISO week, from Monday.
    Week,
    /// The local month.
    Month,
    /// Ever.
    Total,
}

impl Period {
    /// Every period, shortest first.
    pub const ALL: [Self; 4] = [Self::Day, Self::Week, Self::Month, Self::Total];

    /// Its name as stored (`cap_usage.period`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Total => "total",
        }
    }

    /// The first day of the period holding the local date `date`.
    pub fn start(self, date: NaiveDate) -> NaiveDate {
        match self {
            Self::Day => date,
            Self::Week => date - Duration::days(i64::from(date.weekday().num_days_from_monday())),
            Self::Month => date.with_day(1).unwrap_or(date),
            Self::Total => NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default(),
        }
    }

    /// The first day of the next period (`None` for `Total`, which never ends).
    pub fn next_start(self, date: NaiveDate) -> Option<NaiveDate> {
        match self {
            Self::Day => date.succ_opt(),
            Self::Week => Some(self.start(date) + Duration::days(7)),
            Self::Month => {
                let (year, month) =
                    if date.month() == 12 { (date.year() + 1, 1) } else { (date.year(), date.month() + 1) };
                NaiveDate::from_ymd_opt(year, month, 1)
            }
            Self::Total => None,
        }
    }
}

/// A limit per period (`daily`, `weekly`, `monthly`, `total`), each optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits<T> {
    /// Per local day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<T>,
    /// Per local week (Monday to Sunday).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly: Option<T>,
    /// Per local month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly: Option<T>,
    /// In all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<T>,
}

impl<T> Default for Limits<T> {
    fn default() -> Self {
        Self { daily: None, weekly: None, monthly: None, total: None }
    }
}

impl<T: Copy> Limits<T> {
    /// The limit of `period`.
    pub fn get(&self, period: Period) -> Option<T> {
        match period {
            Period::Day => self.daily,
            Period::Week => self.weekly,
            Period::Month => self.monthly,
            Period::Total => self.total,
        }
    }

    /// Whether no period is limited.
    pub fn is_empty(&self) -> bool {
        Period::ALL.iter().all(|&p| self.get(p).is_none())
    }

    /// The limited periods with their limits.
    pub fn iter(&self) -> impl Iterator<Item = (Period, T)> + '_ {
        Period::ALL.into_iter().filter_map(|p| self.get(p).map(|limit| (p, limit)))
    }
}

// ---- schedules -----------------------------------------------------------------------------

/// Opening hours as written: `"08:00-18:00"`, a list of such, or `"closed"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Hours {
    /// One range, or `closed`.
    One(String),
    /// Several ranges.
    Many(Vec<String>),
}

/// When a partner takes leads, in its time zone: opening hours per day (`mon` .. `sun`, ranges
/// such as `mon-fri`, or `daily`; a day not named is closed) and exceptions per date
/// (`"2026-12-25": closed`, `"2026-12-24": "08:00-12:00"`), which replace that day's hours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Day or days → hours.
    pub hours: BTreeMap<String, Hours>,
    /// Date (`YYYY-MM-DD`) → hours that day.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exceptions: BTreeMap<String, Hours>,
}

/// Open minutes of a day: `[start, end)` ranges, minutes from midnight.
type DayHours = Vec<(u32, u32)>;

/// A [`Schedule`] read: hours per weekday (Monday first) and per exception date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeekPlan {
    days: [DayHours; 7],
    exceptions: BTreeMap<NaiveDate, DayHours>,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn minutes(text: &str) -> Option<u32> {
    let (h, m) = text.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
}

fn day_hours(hours: &Hours) -> std::result::Result<DayHours, String> {
    let texts: Vec<&str> = match hours {
        Hours::One(text) if text.trim() == "closed" => return Ok(Vec::new()),
        Hours::One(text) => vec![text.as_str()],
        Hours::Many(list) => list.iter().map(String::as_str).collect(),
    };
    let mut ranges = Vec::new();
    for text in texts {
        let range = text
            .split_once('-')
            .and_then(|(a, b)| Some((minutes(a)?, minutes(b)?)))
            .ok_or_else(|| format!("`{text}` is not opening hours like \"08:00-18:00\" (or \"closed\")"))?;
        if range.0 >= range.1 {
            return Err(format!("`{text}` ends before it starts (split a range over midnight in two days)"));
        }
        ranges.push(range);
    }
    ranges.sort_unstable();
    Ok(ranges)
}

impl Schedule {
    /// Reads the schedule; the error says what is wrong.
    pub fn plan(&self) -> std::result::Result<WeekPlan, String> {
        let mut days: [DayHours; 7] = Default::default();
        for (key, hours) in &self.hours {
            let hours = day_hours(hours).map_err(|e| format!("schedule `{key}`: {e}"))?;
            let index = |name: &str| DAYS.iter().position(|d| *d == name.trim());
            let covered: Vec<usize> = match key.trim() {
                "daily" => (0..7).collect(),
                other => match other.split_once('-') {
                    Some((from, to)) => match (index(from), index(to)) {
                        (Some(a), Some(b)) if a <= b => (a..=b).collect(),
                        _ => return Err(format!("schedule: `{key}` is not a day range like mon-fri")),
                    },
                    None => vec![index(other).ok_or_else(|| {
                        format!("schedule: `{key}` is not a day (mon, tue, wed, thu, fri, sat, sun, daily or a range)")
                    })?],
                },
            };
            for day in covered {
                days[day].extend(hours.iter().copied());
                days[day].sort_unstable();
            }
        }
        let mut exceptions = BTreeMap::new();
        for (date, hours) in &self.exceptions {
            let day = NaiveDate::parse_from_str(date.trim(), "%Y-%m-%d")
                .map_err(|_| format!("schedule exception `{date}` is not a date like 2026-12-25"))?;
            exceptions.insert(day, day_hours(hours).map_err(|e| format!("schedule exception `{date}`: {e}"))?);
        }
        Ok(WeekPlan { days, exceptions })
    }
}

impl WeekPlan {
    fn hours_of(&self, date: NaiveDate) -> &DayHours {
        self.exceptions.get(&date).unwrap_or(&self.days[date.weekday().num_days_from_monday() as usize])
    }

    /// Whether it is open at the local time `at`.
    pub fn is_open(&self, at: NaiveDateTime) -> bool {
        let minute = at.time().num_seconds_from_midnight() / 60;
        self.hours_of(at.date()).iter().any(|&(start, end)| start <= minute && minute < end)
    }

    /// When it opens next after the local time `at` (within the coming 400 days).
    pub fn next_open(&self, at: NaiveDateTime) -> Option<NaiveDateTime> {
        let minute = at.time().num_seconds_from_midnight() / 60;
        for offset in 0..400 {
            let date = at.date() + Duration::days(offset);
            for &(start, _) in self.hours_of(date) {
                if offset > 0 || start > minute {
                    let time = NaiveTime::from_num_seconds_from_midnight_opt(start * 60, 0)?;
                    return Some(date.and_time(time));
                }
            }
        }
        None
    }

    /// Whether it never opens: no hours on any weekday (exceptions aside, which pass).
    pub fn never_opens(&self) -> bool {
        self.days.iter().all(Vec::is_empty) && self.exceptions.values().all(Vec::is_empty)
    }
}

// ---- a partner's availability ---------------------------------------------------------------

/// What of a partner's configuration decides whether it takes a lead now: its time zone,
/// schedule, caps, budget and price, read once.
#[derive(Debug, Clone)]
pub struct Availability {
    /// The partner.
    pub partner: String,
    /// Whether deliver reads its queue.
    pub enabled: bool,
    tz: Tz,
    plan: Option<WeekPlan>,
    caps: Limits<u32>,
    budget: Limits<Cents>,
    price: Cents,
    rule_caps: BTreeMap<String, Limits<u32>>,
}

/// Why a partner does not take a lead now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum Unavailable {
    /// Disabled by an operator.
    Paused,
    /// Outside its schedule.
    Schedule {
        /// When it opens again.
        opens_at: Option<DateTime<Utc>>,
    },
    /// Its circuit is open.
    Circuit,
    /// A cap or budget is reached.
    Capped {
        /// The period whose limit is reached.
        period: Period,
        /// `cap` (leads), `budget` (spend) or `rule` (its cap for the deciding rule).
        limit: &'static str,
        /// When that period ends (`None` for a total).
        until: Option<DateTime<Utc>>,
    },
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Paused => f.write_str("paused"),
            Self::Schedule { .. } => f.write_str("closed by its schedule"),
            Self::Circuit => f.write_str("circuit open"),
            Self::Capped { period, limit, .. } => {
                let period = match period {
                    Period::Day => "daily",
                    Period::Week => "weekly",
                    Period::Month => "monthly",
                    Period::Total => "total",
                };
                match *limit {
                    "budget" => write!(f, "{period} budget spent"),
                    "rule" => write!(f, "{period} cap for this rule reached"),
                    _ => write!(f, "{period} cap reached"),
                }
            }
        }
    }
}

impl Unavailable {
    /// How long a lead held for this partner should wait before it is tried again.
    pub fn wait(&self, now: DateTime<Utc>) -> std::time::Duration {
        let until = match self {
            Self::Schedule { opens_at } => *opens_at,
            Self::Capped { until, .. } => *until,
            Self::Paused | Self::Circuit => None,
        };
        // A minute when nothing says when (a total cap, a pause), at most a day between tries.
        until
            .and_then(|at| (at - now).to_std().ok())
            .unwrap_or(std::time::Duration::from_secs(60))
            .clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(86_400))
    }
}

impl Availability {
    /// Reads a partner's distribution settings (validated by `PartnerConfig::validate`; a
    /// setting that does not read is left out, with the reason in the error).
    pub fn of(partner: &crate::partners::PartnerConfig) -> std::result::Result<Self, String> {
        let tz: Tz = partner
            .timezone
            .parse()
            .map_err(|_| format!("`{}` is not a time zone (e.g. America/Chicago)", partner.timezone))?;
        let plan = partner.schedule.as_ref().map(Schedule::plan).transpose()?;
        if !partner.budget.is_empty() && partner.price.is_none() {
            return Err("a budget needs a `price` per lead".to_owned());
        }
        Ok(Self {
            partner: partner.name.clone(),
            enabled: partner.enabled,
            tz,
            plan,
            caps: partner.caps.clone(),
            budget: partner.budget.clone(),
            price: partner.price.unwrap_or_default(),
            rule_caps: partner.rule_caps.clone(),
        })
    }

    /// The partner's local time at `now`.
    pub fn local(&self, now: DateTime<Utc>) -> NaiveDateTime {
        now.with_timezone(&self.tz).naive_local()
    }

    fn utc_of(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        self.tz.from_local_datetime(&local).earliest().map(|t| t.with_timezone(&Utc))
    }

    /// Whether it is paused or closed by its schedule at `now` (caps and circuit aside).
    pub fn closed(&self, now: DateTime<Utc>) -> Option<Unavailable> {
        if !self.enabled {
            return Some(Unavailable::Paused);
        }
        let plan = self.plan.as_ref()?;
        let local = self.local(now);
        (!plan.is_open(local))
            .then(|| Unavailable::Schedule { opens_at: plan.next_open(local).and_then(|at| self.utc_of(at)) })
    }

    /// Whether any cap or budget applies to leads of `rule`.
    pub fn capped(&self, rule: Option<&str>) -> bool {
        !self.caps.is_empty()
            || !self.budget.is_empty()
            || rule.and_then(|r| self.rule_caps.get(r)).is_some_and(|l| !l.is_empty())
    }

    /// Why it can never take a lead, if it cannot: a cap or budget of 0, or a schedule that
    /// never opens. The rules' analysis reports rules that sell only to such partners.
    pub fn never(&self) -> Option<String> {
        if let Some((period, _)) = self.caps.iter().find(|&(_, n)| n == 0) {
            return Some(format!("its {} cap is 0", period.as_str()));
        }
        if let Some((period, _)) = self.budget.iter().find(|&(_, b)| b < self.price || b.0 == 0) {
            return Some(format!("its {} budget is below its price", period.as_str()));
        }
        self.plan.as_ref().is_some_and(WeekPlan::never_opens).then(|| "its schedule never opens".to_owned())
    }

    /// The counters a lead of `rule` counts against at `now`, each with its lead limit and
    /// spend limit (in cents) and what kind of limit it is.
    fn counters(
        &self,
        rule: Option<&str>,
        now: DateTime<Utc>,
    ) -> Vec<(CapKey, Option<u32>, Option<Cents>, &'static str)> {
        let date = self.local(now).date();
        let key = |rule: &str, period: Period| CapKey {
            partner: self.partner.clone(),
            rule: rule.to_owned(),
            period,
            start: period.start(date),
        };
        let mut out = Vec::new();
        for period in Period::ALL {
            let (cap, budget) = (self.caps.get(period), self.budget.get(period));
            if cap.is_some() || budget.is_some() {
                out.push((key("", period), cap, budget, if cap.is_some() { "cap" } else { "budget" }));
            }
            if let Some(rule) = rule
                && let Some(cap) = self.rule_caps.get(rule).and_then(|l| l.get(period))
            {
                out.push((key(rule, period), Some(cap), None, "rule"));
            }
        }
        out
    }

    fn period_end(&self, period: Period, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let next = period.next_start(self.local(now).date())?;
        self.utc_of(next.and_time(NaiveTime::MIN))
    }
}

// ---- what a replica knows of the partners now -------------------------------------------------

/// A partner's availability settings and whether its circuit lets leads through.
#[derive(Debug, Clone)]
pub struct PartnerState {
    /// Its settings.
    pub availability: Availability,
    /// Its circuit is not closed (open, or half-open with a probe in flight).
    pub circuit_open: bool,
}

impl PartnerState {
    /// Why it does not take a lead at `now` (caps aside: they need the batch's [`Ledger`]).
    pub fn closed(&self, now: DateTime<Utc>) -> Option<Unavailable> {
        self.availability.closed(now).or_else(|| self.circuit_open.then_some(Unavailable::Circuit))
    }
}

/// A reading of every partner's state, when it was taken, and which partners' settings it
/// read.
type Reading = (Option<std::time::Instant>, Arc<HashMap<String, PartnerState>>, Option<SettingsVersion>);

/// What changes when any partner's availability settings do: a digest of every partner's
/// name, switch and distribution settings (so also a change made by hand in SQL is seen).
type SettingsVersion = Option<String>;

/// Every partner's [`PartnerState`], read from `partners` and `circuit_breakers` at most `ttl`
/// ago: what routers decide availability from (a circuit opened elsewhere is seen within `ttl`).
pub struct PartnerStates {
    ttl: std::time::Duration,
    read: std::sync::Mutex<Reading>,
}

impl PartnerStates {
    /// Nothing read yet; `ttl` is how long a reading is trusted.
    pub fn new(ttl: std::time::Duration) -> Self {
        Self { ttl, read: std::sync::Mutex::new((None, Arc::default(), None)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Reading> {
        // The data is replaced whole, never left half-written: a poisoned lock is still usable.
        self.read.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The partners as last read, reading them again first when the reading is older than the
    /// ttl: the circuits every time, the settings only when some partner's changed (a
    /// thousand partners' settings are not parsed every second). A partner whose settings do
    /// not read (never stored so: `apply` validates) is left out, which makes it always
    /// available, with a warning.
    pub async fn current(&self, conn: &mut PgConnection) -> Result<Arc<HashMap<String, PartnerState>>> {
        let (known, previous) = {
            let read = self.lock();
            if read.0.is_some_and(|at| at.elapsed() < self.ttl) {
                return Ok(Arc::clone(&read.1));
            }
            (read.2.clone(), Arc::clone(&read.1))
        };
        let version: SettingsVersion = sqlx::query_scalar(
            "SELECT md5(string_agg(name || ':' || enabled::text || ':' || distribution::text, ',' ORDER BY name))
             FROM partners",
        )
        .fetch_one(&mut *conn)
        .await?;
        let circuits: HashMap<String, crate::state::CircuitState> =
            crate::partners::circuits(&mut *conn).await?.into_iter().collect();
        let open = |name: &str| circuits.get(name).is_some_and(|c| *c != crate::state::CircuitState::Closed);
        let states: HashMap<String, PartnerState> = if known.as_ref() == Some(&version) {
            previous
                .iter()
                .map(|(name, state)| {
                    (name.clone(), PartnerState { availability: state.availability.clone(), circuit_open: open(name) })
                })
                .collect()
        } else {
            let mut states = HashMap::new();
            for config in crate::partners::load_all(conn).await? {
                match Availability::of(&config) {
                    Ok(availability) => {
                        let circuit_open = open(&config.name);
                        states.insert(config.name.clone(), PartnerState { availability, circuit_open });
                    }
                    Err(error) => {
                        tracing::warn!(partner = %config.name, %error, "partner settings do not read; taken as always available")
                    }
                }
            }
            states
        };
        let states = Arc::new(states);
        *self.lock() = (Some(std::time::Instant::now()), Arc::clone(&states), Some(version));
        Ok(states)
    }
}

// ---- cap counters ----------------------------------------------------------------------------

/// One cap counter: a partner's (or its cap for one rule's) leads and spend in one period.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CapKey {
    /// The partner.
    pub partner: String,
    /// The rule whose cap it is; empty for the partner's own caps and budget.
    pub rule: String,
    /// The period.
    pub period: Period,
    /// The period's first local day.
    pub start: NaiveDate,
}

/// Leads and spend counted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Leads.
    pub leads: i64,
    /// Spend, in cents.
    pub spend: i64,
}

/// The cap counters of a batch, locked in its transaction: reservations are made in memory
/// against them ([`Ledger::room`], [`Ledger::take`]), then written in one statement ([`Ledger::save`]).
#[derive(Debug, Default)]
pub struct Ledger {
    usage: HashMap<CapKey, Usage>,
    added: HashMap<CapKey, Usage>,
}

impl Ledger {
    /// Locks (creating them at 0 where missing) the counters leads of `wanted` (partner and
    /// deciding rule) would count against at `now`, in key order so replicas never deadlock, and
    /// reads them. Partners without caps need none.
    pub async fn lock(
        conn: &mut PgConnection,
        wanted: &[(&Availability, Option<&str>)],
        now: DateTime<Utc>,
    ) -> Result<Self> {
        let mut keys: Vec<CapKey> =
            wanted.iter().flat_map(|(a, rule)| a.counters(*rule, now)).map(|(key, ..)| key).collect();
        keys.sort();
        keys.dedup();
        let mut ledger = Self::default();
        if keys.is_empty() {
            return Ok(ledger);
        }
        // ON CONFLICT DO UPDATE locks an existing row as an UPDATE would, rows in key order; the
        // counts given back since (`cap_returns`) are folded in on the way.
        let rows: Vec<(String, String, String, NaiveDate, i64, i64)> = sqlx::query_as(
            "WITH keys AS (
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::date[]) AS k(partner, rule, period, period_start)
             ), returned AS (
                 DELETE FROM cap_returns r USING keys k
                 WHERE (r.partner, r.rule, r.period, r.period_start) = (k.partner, k.rule, k.period, k.period_start)
                 RETURNING r.partner, r.rule, r.period, r.period_start, r.leads, r.spend_cents
             ), back AS (
                 SELECT partner, rule, period, period_start, sum(leads)::int AS leads, sum(spend_cents)::bigint AS spend
                 FROM returned GROUP BY 1, 2, 3, 4
             )
             INSERT INTO cap_usage AS c (partner, rule, period, period_start)
             SELECT partner, rule, period, period_start FROM keys ORDER BY 1, 2, 3, 4
             ON CONFLICT (partner, rule, period, period_start) DO UPDATE SET
                 leads = greatest(c.leads - coalesce((SELECT b.leads FROM back b WHERE (b.partner, b.rule, b.period, b.period_start)
                                                      = (c.partner, c.rule, c.period, c.period_start)), 0), 0),
                 spend_cents = greatest(c.spend_cents - coalesce((SELECT b.spend FROM back b
                                        WHERE (b.partner, b.rule, b.period, b.period_start)
                                            = (c.partner, c.rule, c.period, c.period_start)), 0), 0)
             RETURNING partner, rule, period, period_start, leads::bigint, spend_cents",
        )
        .bind(keys.iter().map(|k| k.partner.as_str()).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.rule.as_str()).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.period.as_str()).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.start).collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?;
        for (partner, rule, period, start, leads, spend) in rows {
            let Some(period) = Period::ALL.into_iter().find(|p| p.as_str() == period) else { continue };
            ledger.usage.insert(CapKey { partner, rule, period, start }, Usage { leads, spend });
        }
        Ok(ledger)
    }

    /// Whether one more lead of `rule` fits every cap and budget of the partner it counts
    /// against at `now`; if not, which is reached. Only counters [`Ledger::lock`] locked count:
    /// ask for what was wanted.
    pub fn room(
        &self,
        partner: &Availability,
        rule: Option<&str>,
        now: DateTime<Utc>,
    ) -> std::result::Result<(), Unavailable> {
        for (key, cap, budget, kind) in partner.counters(rule, now) {
            let used = self.current(&key);
            let over_cap = cap.is_some_and(|cap| used.leads + 1 > i64::from(cap));
            let over_budget = budget.is_some_and(|budget| used.spend + partner.price.0 > budget.0);
            if over_cap || over_budget {
                let limit = if over_cap { kind } else { "budget" };
                return Err(Unavailable::Capped {
                    period: key.period,
                    limit,
                    until: partner.period_end(key.period, now),
                });
            }
        }
        Ok(())
    }

    /// Counts one lead of `rule` for the partner at `now` (after [`Ledger::room`] said yes).
    pub fn take(&mut self, partner: &Availability, rule: Option<&str>, now: DateTime<Utc>) {
        for (key, ..) in partner.counters(rule, now) {
            let added = self.added.entry(key).or_default();
            added.leads += 1;
            added.spend += partner.price.0;
        }
    }

    fn current(&self, key: &CapKey) -> Usage {
        let (base, added) =
            (self.usage.get(key).copied().unwrap_or_default(), self.added.get(key).copied().unwrap_or_default());
        Usage { leads: base.leads + added.leads, spend: base.spend + added.spend }
    }

    /// Writes what was reserved, in the caller's transaction (the rows exist: [`Ledger::lock`]
    /// made them).
    pub async fn save(&self, conn: &mut PgConnection) -> Result<()> {
        let deltas: Vec<(&CapKey, Usage)> = self.added.iter().map(|(k, u)| (k, *u)).collect();
        add_usage(conn, deltas).await
    }

    /// Gives back the counts leads of `rule` took for the partner when they were routed at
    /// `reserved_at` (deliver found them duplicates and never sent them), in the caller's
    /// transaction: appended to `cap_returns`, which the next [`Ledger::lock`] of those counters
    /// folds in, so deliver never waits for a router holding them.
    pub async fn release(
        conn: &mut PgConnection,
        partner: &Availability,
        released: &[(Option<&str>, DateTime<Utc>)],
    ) -> Result<()> {
        let keys: Vec<CapKey> =
            released.iter().flat_map(|(rule, at)| partner.counters(*rule, *at)).map(|(key, ..)| key).collect();
        if keys.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO cap_returns (partner, rule, period, period_start, leads, spend_cents)
             SELECT p, r, pe, s, 1, $5 FROM unnest($1::text[], $2::text[], $3::text[], $4::date[]) AS u(p, r, pe, s)",
        )
        .bind(keys.iter().map(|k| k.partner.as_str()).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.rule.as_str()).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.period.as_str()).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.start).collect::<Vec<_>>())
        .bind(partner.price.0)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// Adds `deltas` to existing counters, in key order.
async fn add_usage(conn: &mut PgConnection, mut deltas: Vec<(&CapKey, Usage)>) -> Result<()> {
    if deltas.is_empty() {
        return Ok(());
    }
    deltas.sort_by(|a, b| a.0.cmp(b.0));
    sqlx::query(
        "UPDATE cap_usage c SET leads = c.leads + u.l, spend_cents = c.spend_cents + u.sp
         FROM unnest($1::text[], $2::text[], $3::text[], $4::date[], $5::bigint[], $6::bigint[]) AS u(p, r, pe, s, l, sp)
         WHERE c.partner = u.p AND c.rule = u.r AND c.period = u.pe AND c.period_start = u.s",
    )
    .bind(deltas.iter().map(|(k, _)| k.partner.as_str()).collect::<Vec<_>>())
    .bind(deltas.iter().map(|(k, _)| k.rule.as_str()).collect::<Vec<_>>())
    .bind(deltas.iter().map(|(k, _)| k.period.as_str()).collect::<Vec<_>>())
    .bind(deltas.iter().map(|(k, _)| k.start).collect::<Vec<_>>())
    .bind(deltas.iter().map(|(_, u)| u.leads).collect::<Vec<_>>())
    .bind(deltas.iter().map(|(_, u)| u.spend).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A partner's counters for the periods running at `now`, in its local calendar: what its caps
/// and budget have used (for the admin API and the demo). Partners without caps have none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CapCount {
    /// The rule whose cap it is (`None`: the partner's own caps and budget).
    pub rule: Option<String>,
    /// The period.
    pub period: Period,
    /// Leads counted.
    pub leads: i64,
    /// Its lead cap, if it has one.
    pub cap: Option<u32>,
    /// Spend counted.
    pub spend: Cents,
    /// Its budget, if it has one.
    pub budget: Option<Cents>,
}

impl Availability {
    /// The counters of the partner's caps (and of its rule caps) for the periods running at
    /// `now`, read without locking; a period not counted yet reads 0.
    pub async fn counts(&self, conn: &mut PgConnection, now: DateTime<Utc>) -> Result<Vec<CapCount>> {
        let date = self.local(now).date();
        let count = |rule: Option<String>, period, cap, budget| CapCount {
            rule,
            period,
            leads: 0,
            cap,
            spend: Cents(0),
            budget,
        };
        let mut counts: Vec<CapCount> = Period::ALL
            .into_iter()
            .filter(|&p| self.caps.get(p).is_some() || self.budget.get(p).is_some())
            .map(|p| count(None, p, self.caps.get(p), self.budget.get(p)))
            .collect();
        for (rule, limits) in &self.rule_caps {
            counts.extend(limits.iter().map(|(p, cap)| count(Some(rule.clone()), p, Some(cap), None)));
        }
        if counts.is_empty() {
            return Ok(counts);
        }
        let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT u.rule, u.period,
                    greatest(u.leads - coalesce(sum(r.leads), 0), 0)::bigint,
                    greatest(u.spend_cents - coalesce(sum(r.spend_cents), 0), 0)::bigint
             FROM cap_usage u
             LEFT JOIN cap_returns r ON (r.partner, r.rule, r.period, r.period_start) = (u.partner, u.rule, u.period, u.period_start)
             WHERE u.partner = $1 AND (u.period, u.period_start) IN (SELECT * FROM unnest($2::text[], $3::date[]))
             GROUP BY u.rule, u.period, u.leads, u.spend_cents",
        )
        .bind(&self.partner)
        .bind(Period::ALL.iter().map(|p| p.as_str()).collect::<Vec<_>>())
        .bind(Period::ALL.iter().map(|p| p.start(date)).collect::<Vec<_>>())
        .fetch_all(conn)
        .await?;
        for (rule, period, leads, spend) in rows {
            let found = counts
                .iter_mut()
                .find(|c| c.rule.as_deref().unwrap_or_default() == rule && c.period.as_str() == period);
            if let Some(c) = found {
                c.leads = leads;
                c.spend = Cents(spend);
            }
        }
        Ok(counts)
    }
}

// ---- weighted splits -------------------------------------------------------------------------

/// The positions of the weighted splits a batch uses (smooth weighted round robin, as nginx
/// balances upstreams), locked in its transaction: deterministic, the realised shares follow
/// the weights within one lead at every point, and unavailable partners are skipped.
#[derive(Debug, Default)]
pub struct Splits {
    current: HashMap<(String, String), i64>,
    changed: bool,
}

impl Splits {
    /// Locks (creating them at 0) the positions of `pairs` (rule, partner), in order.
    pub async fn lock(conn: &mut PgConnection, pairs: &[(&str, &str)]) -> Result<Self> {
        let mut pairs: Vec<(&str, &str)> = pairs.to_vec();
        pairs.sort_unstable();
        pairs.dedup();
        let mut splits = Self::default();
        if pairs.is_empty() {
            return Ok(splits);
        }
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "INSERT INTO split_state (rule, partner)
             SELECT * FROM unnest($1::text[], $2::text[])
             ON CONFLICT (rule, partner) DO UPDATE SET current = split_state.current
             RETURNING rule, partner, current",
        )
        .bind(pairs.iter().map(|(r, _)| *r).collect::<Vec<_>>())
        .bind(pairs.iter().map(|(_, p)| *p).collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?;
        splits.current = rows.into_iter().map(|(rule, partner, current)| ((rule, partner), current)).collect();
        Ok(splits)
    }

    /// Picks among `weights` (partner, weight) of `rule` the next partner for which `available`
    /// says yes: each available partner gains its weight, the one furthest ahead is chosen and
    /// set back by the available total. `None` when none is available.
    pub fn pick<'a>(
        &mut self,
        rule: &str,
        weights: &'a [(String, u32)],
        mut available: impl FnMut(&str) -> bool,
    ) -> Option<&'a str> {
        let open: Vec<&(String, u32)> = weights.iter().filter(|(p, w)| *w > 0 && available(p)).collect();
        let total: i64 = open.iter().map(|(_, w)| i64::from(*w)).sum();
        if total == 0 {
            return None;
        }
        let mut best: Option<(&str, i64)> = None;
        for (partner, weight) in open {
            let current = self.current.entry((rule.to_owned(), partner.clone())).or_insert(0);
            *current += i64::from(*weight);
            if best.is_none_or(|(_, b)| *current > b) {
                best = Some((partner.as_str(), *current));
            }
        }
        let (chosen, _) = best?;
        if let Some(current) = self.current.get_mut(&(rule.to_owned(), chosen.to_owned())) {
            *current -= total;
        }
        self.changed = true;
        Some(chosen)
    }

    /// Writes the positions, in the caller's transaction.
    pub async fn save(&self, conn: &mut PgConnection) -> Result<()> {
        if !self.changed {
            return Ok(());
        }
        let mut rows: Vec<(&(String, String), &i64)> = self.current.iter().collect();
        rows.sort();
        sqlx::query(
            "UPDATE split_state s SET current = u.c, updated_at = now()
             FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(r, p, c)
             WHERE s.rule = u.r AND s.partner = u.p",
        )
        .bind(rows.iter().map(|((r, _), _)| r.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|((_, p), _)| p.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, c)| **c).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, reason = "a test fails loudly, with the expectation as its message")]

    use super::*;

    #[test]
    fn amounts_are_exact_cents() {
        assert_eq!(Cents::parse("25"), Some(Cents(2500)));
        assert_eq!(Cents::parse("25.5"), Some(Cents(2550)));
        assert_eq!(Cents::parse("0.07"), Some(Cents(7)));
        for bad in ["", "-1", "1.234", "1e3", "abc", ".5"] {
            assert_eq!(Cents::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Cents(1205).to_string(), "12.05");
        let read: Cents = serde_json::from_value(serde_json::json!(12.5)).expect("a number");
        assert_eq!(read, Cents(1250));
    }

    #[test]
    fn periods_start_on_the_local_calendar() {
        let date = NaiveDate::from_ymd_opt(2026, 12, 10).expect("date"); // a Thursday
        assert_eq!(Period::Day.start(date), date);
        assert_eq!(Period::Week.start(date), NaiveDate::from_ymd_opt(2026, 12, 7).expect("monday"));
        assert_eq!(Period::Month.start(date), NaiveDate::from_ymd_opt(2026, 12, 1).expect("first"));
        assert_eq!(Period::Month.next_start(date), NaiveDate::from_ymd_opt(2027, 1, 1));
        assert_eq!(Period::Week.next_start(date), NaiveDate::from_ymd_opt(2026, 12, 14));
        assert_eq!(Period::Total.next_start(date), None);
    }

    fn plan(yaml: &str) -> WeekPlan {
        let schedule: Schedule = serde_json::from_str(yaml).expect("schedule JSON");
        schedule.plan().expect("valid")
    }

    fn at(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").expect("time")
    }

    #[test]
    fn schedules_open_on_their_days_and_hours_with_exceptions() {
        let p = plan(
            r#"{"hours": {"mon-fri": "08:00-18:00", "sat": ["09:00-12:00", "13:00-15:00"]},
                "exceptions": {"2026-12-25": "closed", "2026-12-26": "10:00-11:00"}}"#,
        );
        assert!(p.is_open(at("2026-12-07 08:00"))); // Monday
        assert!(!p.is_open(at("2026-12-07 07:59")));
        assert!(p.is_open(at("2026-12-07 17:59")));
        assert!(!p.is_open(at("2026-12-07 18:00")));
        assert!(!p.is_open(at("2026-12-12 12:30"))); // Saturday lunch
        assert!(p.is_open(at("2026-12-12 13:00")));
        assert!(!p.is_open(at("2026-12-13 10:00"))); // Sunday: not named
        assert!(!p.is_open(at("2026-12-25 10:00"))); // a Friday holiday
        assert!(p.is_open(at("2026-12-26 10:30"))); // a Saturday exception
        assert_eq!(p.next_open(at("2026-12-07 18:00")), Some(at("2026-12-08 08:00")));
        assert_eq!(p.next_open(at("2026-12-24 19:00")), Some(at("2026-12-26 10:00")));
        assert!(!p.never_opens());
        assert!(plan(r#"{"hours": {"daily": "closed"}}"#).never_opens());
        for bad in [
            r#"{"hours": {"mon": "18:00-08:00"}}"#,
            r#"{"hours": {"funday": "08:00-18:00"}}"#,
            r#"{"hours": {"fri-mon": "08:00-18:00"}}"#,
            r#"{"hours": {"mon": "8-18"}}"#,
            r#"{"hours": {"mon": "08:00-25:00"}}"#,
            r#"{"hours": {}, "exceptions": {"12/25": "closed"}}"#,
        ] {
            let schedule: Schedule = serde_json::from_str(bad).expect("JSON");
            assert!(schedule.plan().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_smooth_weighted_split_follows_its_weights_and_skips_the_unavailable() {
        let weights = vec![("a".to_owned(), 70), ("b".to_owned(), 30)];
        let mut splits = Splits::default();
        let mut counts: HashMap<&str, i64> = HashMap::new();
        for n in 1..=1000 {
            let chosen = splits.pick("r", &weights, |_| true).expect("a partner");
            *counts.entry(chosen).or_default() += 1;
            // At every point the realised shares are within one lead of the weights.
            let a = counts.get("a").copied().unwrap_or(0);
            assert!((a * 100 - 70 * n).abs() <= 100, "after {n}: {counts:?}");
        }
        assert_eq!((counts["a"], counts["b"]), (700, 300));
        // With `a` unavailable every lead goes to `b`; none is available: none.
        assert_eq!(splits.pick("r", &weights, |p| p != "a"), Some("b"));
        assert_eq!(splits.pick("r", &weights, |_| false), None);
    }
}
