//! The lead generator: a pool of people (names, emails, US phones, a home state and ZIP, age,
//! schooling, credit) and the posts they make to the sites, fresh or as a repeat visit with
//! the identity spelled differently. Everything comes from one seeded PRNG, so a seed always
//! yields the same sequence of posts.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};

use crate::data::{self, State};

/// Share of people with a throwaway or placeholder email domain (test traffic).
const THROWAWAY_SHARE: f64 = 0.005;

/// Birth years in emails (`jsmith84`) count back from this year, not from the clock, so the
/// leads do not depend on when they are generated.
const REFERENCE_YEAR: u32 = 2025;

/// What a site sells, which decides the offer fields of its leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vertical {
    /// Schools: `state`, `age`, `program`, `zip`, `has_diploma`, `education_level`.
    Education,
    /// Lenders: `state`, `age`, `credit_score`, `loan_amount`, `zip`.
    Finance,
}

impl Vertical {
    /// Ages the vertical's forms accept, inclusive. Loan forms take 17 too: minors do apply,
    /// and the rules turn them away (`qc-underage`).
    pub(crate) fn ages(self) -> (u8, u8) {
        match self {
            Vertical::Education => (17, 60),
            Vertical::Finance => (17, 80),
        }
    }
}

/// A site of `examples/rules.yaml` that leads are posted to.
#[derive(Debug, Clone)]
pub(crate) struct Site {
    /// The site's name (its key decides the site on the server; the name picks the vertical).
    pub(crate) name: String,
    /// What the site sells.
    pub(crate) vertical: Vertical,
    /// Programs asked for (education sites; empty for finance).
    programs: &'static [(&'static str, u32)],
}

impl Site {
    /// Names of the sites the generator knows, with their verticals, for messages.
    pub(crate) const KNOWN: &'static str =
        "degreefinder, nursingdegrees, onlinemba (education), loanmatch, quickcash (finance)";

    /// The site called `name`, if it is one of [`Site::KNOWN`].
    pub(crate) fn named(name: &str) -> Option<Self> {
        let (vertical, programs) = match name {
            "degreefinder" => (Vertical::Education, data::DEGREEFINDER_PROGRAMS),
            "nursingdegrees" => (Vertical::Education, data::NURSING_PROGRAMS),
            "onlinemba" => (Vertical::Education, data::MBA_PROGRAMS),
            "loanmatch" | "quickcash" => (Vertical::Finance, &[][..]),
            _ => return None,
        };
        Some(Self { name: name.to_owned(), vertical, programs })
    }
}

/// The ways people write a US phone number in a form.
const PHONE_STYLES: usize = 9;

fn format_phone(style: usize, area: u16, exchange: u16, line: u16) -> String {
    match style % PHONE_STYLES {
        0 => format!("({area}) {exchange}-{line:04}"),
        1 => format!("{area}-{exchange}-{line:04}"),
        2 => format!("{area}.{exchange}.{line:04}"),
        3 => format!("{area}{exchange}{line:04}"),
        4 => format!("+1 {area} {exchange} {line:04}"),
        5 => format!("+1 ({area}) {exchange}-{line:04}"),
        6 => format!("1-{area}-{exchange}-{line:04}"),
        7 => format!("+1{area}{exchange}{line:04}"),
        _ => format!("{area} {exchange} {line:04}"),
    }
}

/// One person of the pool, with the spelling they use the first time.
#[derive(Debug, Clone)]
pub(crate) struct Person {
    first: &'static str,
    last: &'static str,
    /// Canonical email (lowercase).
    pub(crate) email: String,
    area: u16,
    exchange: u16,
    line: u16,
    phone_style: usize,
    state: &'static State,
    zip: String,
    age: u8,
    has_diploma: bool,
    education_level: &'static str,
    /// `None`: the person does not know their score (5%).
    credit_score: Option<u16>,
}

impl Person {
    /// The name as first written: `First Last`.
    pub(crate) fn full_name(&self) -> String {
        format!("{} {}", self.first, self.last)
    }

    /// The phone as first written.
    #[cfg(test)]
    pub(crate) fn phone(&self) -> String {
        format_phone(self.phone_style, self.area, self.exchange, self.line)
    }

    fn random(rng: &mut StdRng) -> Self {
        let first = pick(rng, data::FIRST_NAMES);
        let last = pick(rng, data::LAST_NAMES);
        let state = weighted_by(rng, data::STATES, |s| s.weight);
        let zip = format!("{:03}{:02}", rng.random_range(state.zip3.0..=state.zip3.1), rng.random_range(0..100));
        let age = random_age(rng);
        let area =
            if rng.random_bool(0.05) { *pick(rng, data::MOVER_AREA_CODES) } else { *pick(rng, state.area_codes) };
        let exchange = loop {
            // Central office codes 200-999, without 555 (fictional) and N11 (service codes).
            let exchange: u16 = rng.random_range(200..=999);
            if exchange != 555 && exchange % 100 != 11 {
                break exchange;
            }
        };
        let line = rng.random_range(0..=9999);
        let has_diploma = rng.random_bool(if age < 18 { 0.4 } else { 0.88 });
        let education_level = if has_diploma {
            let plausible: Vec<_> = data::EDUCATION_LEVELS.iter().filter(|(_, _, min_age)| age >= *min_age).collect();
            weighted_by(rng, &plausible, |(_, weight, _)| *weight).0
        } else {
            "none"
        };
        let credit_score = rng.random_bool(0.95).then(|| {
            let spread: f64 = (0..4).map(|_| rng.random_range(-1.0..1.0)).sum();
            (690.0 + 70.0 * spread).round().clamp(300.0, 850.0) as u16
        });
        let email = random_email(rng, first, last, age);
        let phone_style = rng.random_range(0..PHONE_STYLES);
        Self {
            first,
            last,
            email,
            area,
            exchange,
            line,
            phone_style,
            state,
            zip,
            age,
            has_diploma,
            education_level,
            credit_score,
        }
    }
}

/// Ages of people filling in lead forms: mostly 18-44.
fn random_age(rng: &mut StdRng) -> u8 {
    let bands: &[((u8, u8), u32)] =
        &[((17, 17), 2), ((18, 24), 25), ((25, 34), 28), ((35, 44), 20), ((45, 60), 17), ((61, 80), 8)];
    let (low, high) = weighted_by(rng, bands, |(_, weight)| *weight).0;
    rng.random_range(low..=high)
}

/// Lowercase ASCII letters of a name, for email addresses (`José` → `jose`, `O'Brien` → `obrien`).
fn slug(name: &str) -> String {
    name.chars()
        .flat_map(char::to_lowercase)
        .filter_map(|c| match c {
            'á' | 'à' | 'ä' | 'â' => Some('a'),
            'é' | 'è' | 'ë' | 'ê' => Some('e'),
            'í' | 'ì' | 'ï' | 'î' => Some('i'),
            'ó' | 'ò' | 'ö' | 'ô' => Some('o'),
            'ú' | 'ù' | 'ü' | 'û' => Some('u'),
            'ñ' => Some('n'),
            c if c.is_ascii_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

fn random_email(rng: &mut StdRng, first: &str, last: &str, age: u8) -> String {
    let (f, l) = (slug(first), slug(last));
    let initial = |s: &str| s.chars().next().map(String::from).unwrap_or_default();
    let mut local = match rng.random_range(0..6) {
        0 => format!("{f}.{l}"),
        1 => format!("{f}{l}"),
        2 => format!("{}{l}", initial(&f)),
        3 => format!("{f}_{l}"),
        4 => format!("{l}.{f}"),
        _ => format!("{f}{}", initial(&l)),
    };
    if rng.random_bool(0.6) {
        let suffix =
            if rng.random_bool(0.5) { (REFERENCE_YEAR - u32::from(age)) % 100 } else { rng.random_range(1..1000) };
        local.push_str(&suffix.to_string());
    }
    let edu_share = if age <= 26 { 0.25 } else { 0.08 };
    let mil_share = if (18..=45).contains(&age) { 0.03 } else { 0.0 };
    let domain = if rng.random_bool(THROWAWAY_SHARE) {
        *pick(rng, data::THROWAWAY_DOMAINS)
    } else if rng.random_bool(mil_share) {
        *pick(rng, data::MIL_DOMAINS)
    } else if rng.random_bool(edu_share) {
        *pick(rng, data::EDU_DOMAINS)
    } else {
        weighted_by(rng, data::EMAIL_DOMAINS, |(_, weight)| *weight).0
    };
    format!("{local}@{domain}")
}

/// A uniformly chosen item; `items` is one of the constant, non-empty tables.
fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// An item chosen with probability proportional to `weight`; `items` is non-empty.
fn weighted_by<'a, T>(rng: &mut StdRng, items: &'a [T], weight: impl Fn(&T) -> u32) -> &'a T {
    let total: u32 = items.iter().map(&weight).sum();
    let mut ticket = rng.random_range(0..total.max(1));
    for item in items {
        let w = weight(item);
        if ticket < w {
            return item;
        }
        ticket -= w;
    }
    &items[items.len() - 1]
}

/// One post to make.
#[derive(Debug, Clone)]
pub(crate) struct Lead {
    /// Position in the sequence (0, 1, ...).
    pub(crate) sequence: u64,
    /// Index of the site (in the generator's list) to post for.
    pub(crate) site: usize,
    /// Index of the person in the pool.
    #[cfg_attr(not(test), expect(dead_code, reason = "the tests compare a post with its person"))]
    pub(crate) person: usize,
    /// Whether this is a repeat visit with a spelling variant.
    pub(crate) variant: bool,
    /// The JSON body of `POST /api/submit`.
    pub(crate) body: Value,
}

/// The generator's settings.
#[derive(Debug, Clone)]
pub(crate) struct GeneratorConfig {
    /// Sites to post for, chosen uniformly (among those whose forms take the person's age).
    pub(crate) sites: Vec<Site>,
    /// Size of the person pool; once every person has posted, fresh posts start over.
    pub(crate) people: usize,
    /// Share of posts (0 to 1) by an earlier person, spelled differently.
    pub(crate) repeat_share: f64,
    /// Seed of the PRNG.
    pub(crate) seed: u64,
}

/// Makes leads, one after the other, from a seeded PRNG.
#[derive(Debug)]
pub(crate) struct Generator {
    rng: StdRng,
    config: GeneratorConfig,
    people: Vec<Person>,
    /// Fresh posts so far, to walk the pool again once it is full.
    fresh: usize,
    sequence: u64,
}

impl Generator {
    /// A generator for `config` (a pool of at least one person and at least one site).
    pub(crate) fn new(config: GeneratorConfig) -> Self {
        let config = GeneratorConfig {
            people: config.people.max(1),
            repeat_share: config.repeat_share.clamp(0.0, 1.0),
            ..config
        };
        Self { rng: StdRng::seed_from_u64(config.seed), config, people: Vec::new(), fresh: 0, sequence: 0 }
    }

    /// Person `index` of the pool, once it has posted.
    #[cfg(test)]
    pub(crate) fn person(&self, index: usize) -> Option<&Person> {
        self.people.get(index)
    }

    /// The next post.
    pub(crate) fn next_lead(&mut self) -> Lead {
        let variant = !self.people.is_empty() && self.rng.random_bool(self.config.repeat_share);
        let person = if variant {
            self.rng.random_range(0..self.people.len())
        } else if self.people.len() < self.config.people {
            let person = Person::random(&mut self.rng);
            self.people.push(person);
            self.people.len() - 1
        } else {
            self.fresh % self.people.len()
        };
        if !variant {
            self.fresh += 1;
        }
        let site = self.choose_site(person);
        let body = self.body(person, site, variant);
        let sequence = self.sequence;
        self.sequence += 1;
        Lead { sequence, site, person, variant, body }
    }

    /// A site whose forms take the person's age, else any site (the age is then clamped).
    fn choose_site(&mut self, person: usize) -> usize {
        let age = self.people[person].age;
        let fits: Vec<usize> = (0..self.config.sites.len())
            .filter(|&i| {
                let (low, high) = self.config.sites[i].vertical.ages();
                (low..=high).contains(&age)
            })
            .collect();
        if fits.is_empty() {
            self.rng.random_range(0..self.config.sites.len().max(1))
        } else {
            fits[self.rng.random_range(0..fits.len())]
        }
    }

    fn body(&mut self, index: usize, site: usize, variant: bool) -> Value {
        let rng = &mut self.rng;
        let person = &self.people[index];
        let mut body = Map::new();
        // A few forms leave out the phone or the email; two keys always remain.
        let (with_email, with_phone) = match rng.random_range(0..100) {
            0..4 => (true, false),
            4..7 => (false, true),
            _ => (true, true),
        };
        // A repeat visit changes the spelling of at least one key it sends.
        let sent: Vec<usize> =
            [(0, with_email), (1, true), (2, with_phone)].iter().filter(|k| k.1).map(|k| k.0).collect();
        let forced = if variant { sent[rng.random_range(0..sent.len())] } else { usize::MAX };
        let mut change = |key: usize| variant && (key == forced || rng.random_bool(0.5));
        let (change_email, change_name, change_phone) = (change(0), change(1), change(2));
        if with_email {
            let email = if change_email { email_variant(rng, &person.email) } else { person.email.clone() };
            body.insert("email".to_owned(), Value::from(email));
        }
        if change_name {
            match rng.random_range(0..4) {
                0 => body.insert("full_name".to_owned(), Value::from(person.full_name().to_uppercase())),
                1 => body.insert("full_name".to_owned(), Value::from(person.full_name().to_lowercase())),
                2 => body.insert("full_name".to_owned(), Value::from(format!(" {}   {} ", person.first, person.last))),
                _ => {
                    body.insert("first_name".to_owned(), Value::from(person.first));
                    body.insert("last_name".to_owned(), Value::from(person.last))
                }
            };
        } else {
            body.insert("full_name".to_owned(), Value::from(person.full_name()));
        }
        if with_phone {
            let style = if change_phone {
                (person.phone_style + rng.random_range(1..PHONE_STYLES)) % PHONE_STYLES
            } else {
                person.phone_style
            };
            body.insert(
                "phone".to_owned(),
                Value::from(format_phone(style, person.area, person.exchange, person.line)),
            );
        }
        let site = &self.config.sites[site];
        body.insert("fields".to_owned(), Value::Object(fields(rng, person, site)));
        Value::Object(body)
    }
}

/// The email as someone might type it again: capitals, stray spaces.
fn email_variant(rng: &mut StdRng, email: &str) -> String {
    match rng.random_range(0..3) {
        0 => email.to_uppercase(),
        1 => {
            // `John.Smith@Gmail.com`
            let mut out = String::with_capacity(email.len());
            let mut start = true;
            for c in email.chars() {
                out.extend(if start { c.to_uppercase().collect::<Vec<_>>() } else { vec![c] });
                start = matches!(c, '.' | '@' | '_');
            }
            out
        }
        _ => format!("  {email} "),
    }
}

/// The offer fields of one post for `site` (never the derived ones: `site`, `email_domain`,
/// `submitted_hour`, `submitted_weekday`).
fn fields(rng: &mut StdRng, person: &Person, site: &Site) -> Map<String, Value> {
    let mut fields = Map::new();
    let (low, high) = site.vertical.ages();
    fields.insert("state".to_owned(), Value::from(person.state.code));
    fields.insert("age".to_owned(), Value::from(person.age.clamp(low, high)));
    fields.insert("zip".to_owned(), Value::from(person.zip.clone()));
    match site.vertical {
        Vertical::Education => {
            let program = weighted_by(rng, site.programs, |(_, weight)| *weight).0;
            fields.insert("program".to_owned(), Value::from(program));
            fields.insert("has_diploma".to_owned(), Value::from(person.has_diploma));
            fields.insert("education_level".to_owned(), Value::from(person.education_level));
        }
        Vertical::Finance => {
            if let Some(score) = person.credit_score {
                fields.insert("credit_score".to_owned(), Value::from(score));
            }
            let cents = loan_cents(rng, &site.name);
            // Most forms send a number; some send the amount as text.
            let amount = if rng.random_bool(0.1) {
                Value::from(format!("{}.{:02}", cents / 100, cents % 100))
            } else {
                Value::from(cents as f64 / 100.0)
            };
            fields.insert("loan_amount".to_owned(), amount);
        }
    }
    fields
}

/// A loan amount in cents: payday-size at `quickcash` ($500-$5,000), log-uniform $1,000-$100,000
/// elsewhere; mostly round figures.
fn loan_cents(rng: &mut StdRng, site: &str) -> u64 {
    let (low, high) = if site == "quickcash" { (500.0f64, 5_000.0f64) } else { (1_000.0f64, 100_000.0f64) };
    let dollars = (low.ln() + rng.random::<f64>() * (high.ln() - low.ln())).exp();
    let cents = match rng.random_range(0..10) {
        0..5 => (dollars / 100.0).round() * 10_000.0,
        5..8 => dollars.round() * 100.0,
        _ => (dollars * 100.0).round(),
    };
    (cents as u64).clamp((low * 100.0) as u64, (high * 100.0) as u64)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use pipeline::identity::{Keys, PhoneRegion, join_name, normalize_email, normalize_name, normalize_phone};

    fn sites(names: &[&str]) -> Vec<Site> {
        names.iter().map(|n| Site::named(n).expect("known site")).collect()
    }

    fn generator(seed: u64, people: usize, repeat_share: f64) -> Generator {
        Generator::new(GeneratorConfig {
            sites: sites(&["degreefinder", "nursingdegrees", "onlinemba", "loanmatch", "quickcash"]),
            people,
            repeat_share,
            seed,
        })
    }

    /// `examples/rules.yaml`, type-checked, and its bytes.
    fn example_rules() -> (compiler::model::RuleSet, Vec<u8>) {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/rules.yaml");
        let bytes = std::fs::read(path).expect("examples/rules.yaml");
        let (checked, _, _) = compiler::report::check_rules("rules.yaml", &bytes).expect("checks");
        let (rules, _) = checked.expect("parses");
        (rules, bytes)
    }

    /// The field schema of `examples/rules.yaml`, as the ingest endpoint checks it.
    fn encoder() -> runtime::encode::Encoder {
        let (rules, bytes) = example_rules();
        let compiled = compiler::compile::compile(&rules, &[], &bytes).expect("compiles");
        runtime::encode::Encoder::new(&compiled.manifest)
    }

    #[test]
    fn every_rule_of_the_example_rules_decides_some_leads() {
        // The leads as the router sees them: the offer fields plus what the service derives
        // (the key's site, the normalized email's domain, the hour of day, spread over the day).
        let (rules, _) = example_rules();
        let order = rules.order();
        let mut generator = generator(11, 10_000, 0.3);
        let mut decided: BTreeMap<String, usize> = BTreeMap::new();
        let mut unsold_by_default = 0;
        for n in 0..30_000 {
            let lead = generator.next_lead();
            let mut fields = lead.body["fields"].as_object().expect("fields").clone();
            fields.insert("site".to_owned(), Value::from(generator.config.sites[lead.site].name.clone()));
            if let Some(email) = lead.body.get("email").and_then(Value::as_str) {
                let email = normalize_email(email).expect("a valid email");
                let (_, domain) = email.rsplit_once('@').expect("a domain");
                fields.insert("email_domain".to_owned(), Value::from(domain));
            }
            fields.insert("submitted_hour".to_owned(), Value::from(n % 24));
            let lead = compiler::interp::Lead::from_json(&rules, &Value::Object(fields)).expect("fits the schema");
            match rules.decide_in(&order, &lead).rule {
                Some(rule) => *decided.entry(rule.name.clone()).or_default() += 1,
                None => unsold_by_default += 1,
            }
        }
        let never: Vec<&str> =
            rules.rules.iter().map(|r| r.name.as_str()).filter(|name| !decided.contains_key(*name)).collect();
        assert!(never.is_empty(), "rules that decided no lead: {never:?}; decided: {decided:?}");
        assert!(unsold_by_default > 0, "some leads fall to the default route");
    }

    fn int(fields: &Map<String, Value>, name: &str) -> Option<i64> {
        fields.get(name).map(|v| v.as_i64().unwrap_or_else(|| panic!("{name} is not an integer: {v}")))
    }

    #[test]
    fn fields_are_valid_for_each_vertical() {
        let encoder = encoder();
        let mut generator = generator(7, 2_000, 0.3);
        let mut seen = [0usize; 2];
        for _ in 0..5_000 {
            let lead = generator.next_lead();
            let site = &generator.config.sites[lead.site];
            let fields = lead.body["fields"].as_object().expect("fields object");
            assert_eq!(encoder.problems(fields), Vec::<(String, String)>::new(), "{}", lead.body);
            for derived in pipeline::message::derived::ALL {
                assert!(!fields.contains_key(derived), "derived field {derived} sent");
            }
            let state = fields["state"].as_str().expect("state");
            let zip = fields["zip"].as_str().expect("zip");
            let zip3: u32 = zip[..3].parse().expect("digits");
            let known = data::STATES.iter().find(|s| s.code == state).expect("state of the table");
            assert!(zip.len() == 5 && zip.bytes().all(|b| b.is_ascii_digit()), "{zip}");
            assert!((known.zip3.0..=known.zip3.1).contains(&zip3), "{zip} in {state}");
            let age = int(fields, "age").expect("age");
            let (low, high) = site.vertical.ages();
            assert!((i64::from(low)..=i64::from(high)).contains(&age), "age {age} on {}", site.name);
            match site.vertical {
                Vertical::Education => {
                    seen[0] += 1;
                    let mut keys: Vec<&str> = fields.keys().map(String::as_str).collect();
                    keys.sort_unstable();
                    assert_eq!(keys, ["age", "education_level", "has_diploma", "program", "state", "zip"]);
                    let program = fields["program"].as_str().expect("program");
                    assert!(site.programs.iter().any(|(p, _)| *p == program), "{program}");
                    let diploma = fields["has_diploma"].as_bool().expect("bool");
                    assert_eq!(diploma, fields["education_level"] != "none", "{}", lead.body);
                }
                Vertical::Finance => {
                    seen[1] += 1;
                    assert!(!fields.contains_key("program") && !fields.contains_key("has_diploma"));
                    if let Some(score) = int(fields, "credit_score") {
                        assert!((300..=850).contains(&score), "{score}");
                    }
                    let amount = &fields["loan_amount"];
                    let text = amount.as_str().map_or_else(|| amount.to_string(), str::to_owned);
                    let cents = runtime::encode::parse_units(&text, 2).expect("two decimals at most");
                    let (low, high) =
                        if site.name == "quickcash" { (500 * 100, 5_000 * 100) } else { (1_000 * 100, 100_000 * 100) };
                    assert!((low..=high).contains(&cents), "{text} on {}", site.name);
                }
            }
        }
        assert!(seen.iter().all(|n| *n > 1_000), "{seen:?}");
    }

    #[test]
    fn same_seed_same_leads() {
        let (mut a, mut b, mut c) = (generator(42, 500, 0.3), generator(42, 500, 0.3), generator(43, 500, 0.3));
        let run = |g: &mut Generator| (0..2_000).map(|_| g.next_lead().body).collect::<Vec<_>>();
        let (first, second, other) = (run(&mut a), run(&mut b), run(&mut c));
        assert_eq!(first, second);
        assert_ne!(first, other);
    }

    #[test]
    fn variants_normalize_to_the_person() {
        let region = PhoneRegion::default();
        let mut generator = generator(3, 300, 0.5);
        let mut variants = 0;
        for _ in 0..5_000 {
            let lead = generator.next_lead();
            let person = generator.person(lead.person).expect("pool");
            let body = &lead.body;
            let text = |key: &str| body.get(key).and_then(Value::as_str);
            let name = text("full_name")
                .map(str::to_owned)
                .or_else(|| join_name(text("first_name"), text("last_name")))
                .expect("a name");
            let keys = Keys::normalize(text("email"), Some(&name), text("phone"), region)
                .unwrap_or_else(|e| panic!("{body}: {e:?}"));
            assert!(keys.count() >= 2, "{body}");
            assert_eq!(keys.full_name, Some(normalize_name(&person.full_name()).expect("name")), "{body}");
            if keys.email.is_some() {
                assert_eq!(keys.email, Some(normalize_email(&person.email).expect("email")), "{body}");
            }
            if keys.phone.is_some() {
                assert_eq!(keys.phone, Some(normalize_phone(&person.phone(), region).expect("phone")), "{body}");
            }
            if lead.variant {
                variants += 1;
                assert_ne!(
                    (text("email"), text("full_name"), text("phone")),
                    (Some(person.email.as_str()), Some(person.full_name().as_str()), Some(person.phone().as_str())),
                    "a repeat is spelled differently"
                );
            }
        }
        assert!((2_000..3_000).contains(&variants), "{variants} variants");
    }

    #[test]
    fn every_area_code_and_style_makes_a_valid_phone() {
        let region = PhoneRegion::default();
        let areas: Vec<u16> =
            data::STATES.iter().flat_map(|s| s.area_codes.iter()).chain(data::MOVER_AREA_CODES).copied().collect();
        for &area in &areas {
            for exchange in (200..=999).filter(|e| *e != 555 && e % 100 != 11) {
                let written = format_phone(3, area, exchange, 1234);
                assert!(normalize_phone(&written, region).is_ok(), "{written} is not valid");
            }
            for (exchange, line) in [(200, 0), (649, 1234), (999, 9999)] {
                let e164 = normalize_phone(&format_phone(3, area, exchange, line), region).expect("valid");
                for style in 0..PHONE_STYLES {
                    let written = format_phone(style, area, exchange, line);
                    assert_eq!(normalize_phone(&written, region).as_ref(), Ok(&e164), "{written}");
                }
            }
        }
    }

    #[test]
    fn the_pool_is_reused_once_full() {
        let mut generator = generator(1, 10, 0.0);
        let people: Vec<usize> = (0..30).map(|_| generator.next_lead().person).collect();
        assert_eq!(people, (0..30).map(|i| i % 10).collect::<Vec<_>>());
    }
}
