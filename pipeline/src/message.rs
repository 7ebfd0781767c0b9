//! The messages that travel between the parts (DESIGN.md, "Data flow"): what the ingest API
//! puts on `submissions` and what identify puts on `routing`. One definition per queue, so a
//! producer and its consumer cannot drift apart.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// An accepted submission, on `submissions`. It carries the identity keys as the site sent
/// them (identify normalizes them); this is the only queue with raw personal data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    /// The id the API answered with.
    pub submission_id: Uuid,
    /// The site whose key authenticated the post.
    pub site_id: Uuid,
    /// That site's name (the `site` routing field).
    pub site: String,
    /// When the API accepted it.
    pub submitted_at: DateTime<Utc>,
    /// Email as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Full name as sent (or first and last name joined).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_name: Option<String>,
    /// Phone as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// The offer fields (state, age, program, ...).
    #[serde(default)]
    pub fields: Map<String, Value>,
}

/// An identified lead, on `routing`: who it is and what to route on, without raw personal
/// data (the identity keys stay in `persons`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingLead {
    /// The submission it came from.
    pub submission_id: Uuid,
    /// The site it came from.
    pub site: String,
    /// The person's main record.
    pub person_id: i64,
    /// The alias record the submission's keys matched or created, if not the main record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias_id: Option<i64>,
    /// When the API accepted it.
    pub submitted_at: DateTime<Utc>,
    /// Offer fields plus the derived routing fields ([`derived`]).
    pub fields: Map<String, Value>,
}

/// A routed lead, on `partner_<route>`: the identified lead (its fields at the top level of the
/// message) plus the decision: where it went and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartnerLead {
    /// The lead as identify forwarded it.
    #[serde(flatten)]
    pub lead: RoutingLead,
    /// The route (partner) it was sent to.
    pub route: String,
    /// The rule that decided it; `None` when no rule matched and the default route took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The decision tree (`decision_trees.version`) that decided it.
    pub tree_version: i64,
    /// The candidates tried and why those before the winner were skipped (absent from messages
    /// routed before distribution existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<Routing>,
    /// When the router counted it against the partner's caps (`None`: not counted; deliver
    /// counts it before the call if the partner has caps, as for a lead held for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_at: Option<DateTime<Utc>>,
}

/// Why a lead went where it went: every candidate (rule and partner) tried, in order, and
/// whether it is held for its partner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routing {
    /// The candidates tried, in order: the deciding rules' partners, then the default route.
    pub candidates: Vec<Tried>,
    /// Set when no candidate was available and the lead waits for its partner: why (the rule
    /// does not fall through, or nothing else took it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
}

/// One candidate tried for a lead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tried {
    /// The rule (`None`: the default route).
    pub rule: Option<String>,
    /// The partner.
    pub partner: String,
    /// Why it was passed over (`None`: it took the lead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// Names of the routing fields the service derives (RULES.md); a site may not send them.
pub mod derived {
    /// The key's site.
    pub const SITE: &str = "site";
    /// The domain of the email.
    pub const EMAIL_DOMAIN: &str = "email_domain";
    /// Hour 0-23 of `submitted_at` in the rule set's time zone.
    pub const SUBMITTED_HOUR: &str = "submitted_hour";
    /// Weekday (`mon`..`sun`) of `submitted_at` in the rule set's time zone.
    pub const SUBMITTED_WEEKDAY: &str = "submitted_weekday";
    /// All of them.
    pub const ALL: [&str; 4] = [SITE, EMAIL_DOMAIN, SUBMITTED_HOUR, SUBMITTED_WEEKDAY];
}
