//! Where a decided lead goes (RULES.md "Routes", "Fall-through"): its candidate rules in
//! first-match order, each rule's partners, and what each partner can take now.
//!
//! For each candidate rule in turn: a single partner takes the lead if it is available; a
//! split picks among its available partners by smooth weighted round robin; a shared rule sells
//! it to its available partners in order, up to its `max`. A partner is available when it is
//! enabled, open by its schedule, its circuit closed and its caps (and budget, and its cap for
//! that rule) have room, counted in the batch's [`Ledger`]. When none of a rule's partners is
//! available the lead falls through to the next candidate, unless the rule holds its leads
//! (`fallthrough: false`); after the candidates comes the default route. A lead nobody
//! can take now is held: sent to its first candidate's partner, uncounted, where deliver
//! waits until the partner can take it. Every partner passed over is recorded with why.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use pipeline::distribution::{Ledger, PartnerState, Splits, Unavailable};
use pipeline::message::{Routing, Tried};
use runtime::manifest::Target;

/// A rule of the tree, as allocation needs it.
#[derive(Debug, Clone)]
pub(crate) struct RuleTarget {
    /// Its name.
    pub(crate) name: String,
    /// Its partners, and how.
    pub(crate) target: Target,
    /// Whether its leads fall through when its partners are unavailable.
    pub(crate) fallthrough: bool,
    /// A split's (partner, weight) pairs, in name order.
    pub(crate) weights: Vec<(String, u32)>,
}

impl RuleTarget {
    pub(crate) fn new(name: String, target: Target, fallthrough: bool) -> Self {
        let weights = match &target {
            Target::Split { split } => split.iter().map(|(p, w)| (p.clone(), *w)).collect(),
            _ => Vec::new(),
        };
        Self { name, target, fallthrough, weights }
    }

    /// The partner a lead held for this rule waits for: the partner itself, the heaviest of a
    /// split, the first of a shared sale.
    fn held_for(&self) -> &str {
        match &self.target {
            Target::Partner(p) => p,
            Target::Split { .. } => self.weights.iter().max_by_key(|(_, w)| *w).map_or("", |(p, _)| p.as_str()),
            Target::Shared { shared, .. } => shared.first().map_or("", String::as_str),
        }
    }
}

/// Where one lead goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Allocation {
    /// (partner, deciding rule, counted against its caps) for each partner that takes it; one
    /// for an exclusive lead, several for a shared one, one uncounted when it is held.
    pub(crate) sends: Vec<(String, Option<String>, bool)>,
    /// Why: the candidates tried and whether it is held.
    pub(crate) routing: Routing,
}

impl Allocation {
    /// No rule matched and there is no default route.
    pub(crate) fn unmatched(&self) -> bool {
        self.sends.is_empty()
    }
}

/// What a batch allocates with: the partners now, the batch's locked counters and split
/// positions, and the time.
pub(crate) struct Allocator<'a> {
    pub(crate) partners: &'a HashMap<String, PartnerState>,
    pub(crate) ledger: &'a mut Ledger,
    pub(crate) splits: &'a mut Splits,
    pub(crate) now: DateTime<Utc>,
}

impl Allocator<'_> {
    /// Whether `partner` can take a lead of `rule` now (a partner without settings always can).
    fn available(&self, partner: &str, rule: Option<&str>) -> Result<(), Unavailable> {
        let Some(state) = self.partners.get(partner) else { return Ok(()) };
        if let Some(why) = state.closed(self.now) {
            return Err(why);
        }
        self.ledger.room(&state.availability, rule, self.now)
    }

    /// Counts a lead of `rule` for `partner`; whether it was counted (capped partners only).
    fn take(&mut self, partner: &str, rule: Option<&str>) -> bool {
        match self.partners.get(partner) {
            Some(state) if state.availability.capped(rule) => {
                self.ledger.take(&state.availability, rule, self.now);
                true
            }
            _ => false,
        }
    }

    /// Allocates a lead whose candidate rules are `candidates` (in first-match order), with the
    /// rule set's `default_route`.
    pub(crate) fn allocate(&mut self, candidates: &[&RuleTarget], default_route: Option<&str>) -> Allocation {
        let mut tried: Vec<Tried> = Vec::new();
        let skip = |tried: &mut Vec<Tried>, rule: Option<&str>, partner: &str, why: &Unavailable| {
            tried.push(Tried {
                rule: rule.map(str::to_owned),
                partner: partner.to_owned(),
                skipped: Some(why.to_string()),
            });
        };
        for rule in candidates {
            let name = Some(rule.name.as_str());
            let mut sends = Vec::new();
            match &rule.target {
                Target::Partner(partner) => match self.available(partner, name) {
                    Ok(()) => sends.push(partner.clone()),
                    Err(why) => skip(&mut tried, name, partner, &why),
                },
                Target::Split { .. } => {
                    // Record why each unavailable partner of the split was passed over.
                    let mut unavailable: Vec<(String, Unavailable)> = Vec::new();
                    let weights = &rule.weights;
                    let this = &*self;
                    let available: Vec<bool> = weights
                        .iter()
                        .map(|(p, _)| match this.available(p, name) {
                            Ok(()) => true,
                            Err(why) => {
                                unavailable.push((p.clone(), why));
                                false
                            }
                        })
                        .collect();
                    let picked = self.splits.pick(&rule.name, weights, |p| {
                        weights.iter().position(|(q, _)| q == p).is_some_and(|i| available[i])
                    });
                    // The partners passed over are recorded whether or not another took it.
                    unavailable.iter().for_each(|(p, why)| skip(&mut tried, name, p, why));
                    if let Some(partner) = picked {
                        sends.push(partner.to_owned());
                    }
                }
                Target::Shared { shared, max } => {
                    let mut sold: Vec<(String, Option<String>, bool)> = Vec::new();
                    for partner in shared {
                        if sold.len() == *max {
                            break;
                        }
                        match self.available(partner, name) {
                            Ok(()) => {
                                // Counted at once, so a cap this lead fills is full for the next.
                                let counted = self.take(partner, name);
                                sold.push((partner.clone(), Some(rule.name.clone()), counted));
                            }
                            Err(why) => skip(&mut tried, name, partner, &why),
                        }
                    }
                    if !sold.is_empty() {
                        tried.extend(sold.iter().map(|(p, r, _)| Tried {
                            rule: r.clone(),
                            partner: p.clone(),
                            skipped: None,
                        }));
                        return Allocation { sends: sold, routing: Routing { candidates: tried, held: None } };
                    }
                }
            }
            if let Some(partner) = sends.pop() {
                let counted = self.take(&partner, name);
                tried.push(Tried { rule: Some(rule.name.clone()), partner: partner.clone(), skipped: None });
                return Allocation {
                    sends: vec![(partner, Some(rule.name.clone()), counted)],
                    routing: Routing { candidates: tried, held: None },
                };
            }
            if !rule.fallthrough {
                let why = "its rule holds its leads (`fallthrough: false`)".to_owned();
                return held(rule.held_for(), Some(&rule.name), tried, why);
            }
        }
        if let Some(route) = default_route {
            match self.available(route, None) {
                Ok(()) => {
                    let counted = self.take(route, None);
                    tried.push(Tried { rule: None, partner: route.to_owned(), skipped: None });
                    return Allocation {
                        sends: vec![(route.to_owned(), None, counted)],
                        routing: Routing { candidates: tried, held: None },
                    };
                }
                Err(why) => skip(&mut tried, None, route, &why),
            }
        }
        match candidates.first() {
            Some(first) => {
                held(first.held_for(), Some(&first.name), tried, "no candidate could take it now".to_owned())
            }
            None if !tried.is_empty() => {
                held(&tried[0].partner.clone(), None, tried, "no candidate could take it now".to_owned())
            }
            None => Allocation { sends: Vec::new(), routing: Routing::default() },
        }
    }
}

/// A lead held for `partner`: sent to it uncounted, to wait there until it can take it.
fn held(partner: &str, rule: Option<&str>, tried: Vec<Tried>, why: String) -> Allocation {
    Allocation {
        sends: vec![(partner.to_owned(), rule.map(str::to_owned), false)],
        routing: Routing { candidates: tried, held: Some(why) },
    }
}

/// Where a lead whose candidate rules are `candidates` (name, target, fallthrough, in
/// first-match order) would go while the partners `unavailable` are paused and every other
/// partner can take it: the partners and the record a router would make. What `rulec explain
/// --unavailable` shows, by the same allocation the router runs.
pub fn preview(
    candidates: &[(String, Target, bool)],
    default_route: Option<&str>,
    unavailable: &[&str],
) -> (Vec<(String, Option<String>)>, Routing) {
    let rules: Vec<RuleTarget> = candidates
        .iter()
        .map(|(name, target, fallthrough)| RuleTarget::new(name.clone(), target.clone(), *fallthrough))
        .collect();
    let partners: HashMap<String, PartnerState> = unavailable
        .iter()
        .filter_map(|&name| {
            let config = serde_json::json!({ "name": name, "enabled": false, "request": { "url": "" } });
            let config: pipeline::partners::PartnerConfig = serde_json::from_value(config).ok()?;
            let availability = pipeline::distribution::Availability::of(&config).ok()?;
            Some((name.to_owned(), PartnerState { availability, circuit_open: false }))
        })
        .collect();
    let (mut ledger, mut splits) = (Ledger::default(), Splits::default());
    let mut allocator = Allocator { partners: &partners, ledger: &mut ledger, splits: &mut splits, now: Utc::now() };
    let allocation = allocator.allocate(&rules.iter().collect::<Vec<_>>(), default_route);
    (allocation.sends.into_iter().map(|(p, rule, _)| (p, rule)).collect(), allocation.routing)
}
