//! The three identity keys of a person (email, name, phone) and their normal forms, shared by
//! the ingest API (which rejects what cannot be normalized) and the identify worker (which
//! matches on the normal forms). DESIGN.md, "Identify": email trimmed and lowercased, phone in
//! E.164 with a default region, name in Unicode NFKC, case-folded, whitespace collapsed.

use std::fmt;
use std::str::FromStr;

use unicode_normalization::UnicodeNormalization;

/// A country whose numbering plan applies to phone numbers written without `+` and a country
/// code, e.g. `US` (ISO 3166-1 alpha-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhoneRegion(phonenumber::country::Id);

impl PhoneRegion {
    /// The region's two-letter code.
    pub fn code(&self) -> &str {
        self.0.as_ref()
    }
}

impl Default for PhoneRegion {
    fn default() -> Self {
        Self(phonenumber::country::Id::US)
    }
}

impl FromStr for PhoneRegion {
    type Err = String;

    fn from_str(code: &str) -> Result<Self, String> {
        phonenumber::country::Id::from_str(&code.trim().to_ascii_uppercase())
            .map(Self)
            .map_err(|_| format!("`{code}` is not a two-letter region code such as US or GB"))
    }
}

impl fmt::Display for PhoneRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// One of the three identity keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// The email address.
    Email,
    /// The full name.
    FullName,
    /// The phone number.
    Phone,
}

impl Key {
    /// All three, in the order records store them.
    pub const ALL: [Key; 3] = [Key::Email, Key::FullName, Key::Phone];

    /// The key's name in requests, messages and the `persons` table.
    pub fn name(self) -> &'static str {
        match self {
            Key::Email => "email",
            Key::FullName => "full_name",
            Key::Phone => "phone",
        }
    }
}

/// Why a key could not be normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    /// The key at fault.
    pub key: Key,
    /// What is wrong with it, for the person who sent it.
    pub problem: String,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key.name(), self.problem)
    }
}

impl std::error::Error for KeyError {}

/// An email address trimmed and lowercased, after a syntax check (RFC 5321/5322 through the
/// `email_address` crate) that also insists on a domain with a dot, as deliverable addresses have.
pub fn normalize_email(raw: &str) -> Result<String, KeyError> {
    let bad = |problem: String| KeyError { key: Key::Email, problem };
    let email = raw.trim().to_lowercase();
    if email.is_empty() {
        return Err(bad("is empty".to_owned()));
    }
    email_address::EmailAddress::from_str(&email)
        .map_err(|e| bad(format!("`{}` is not an email address: {e}", raw.trim())))?;
    match email.rsplit_once('@') {
        Some((_, domain)) if domain.contains('.') && !domain.ends_with('.') => Ok(email),
        _ => Err(bad(format!("`{}` has no domain such as example.com", raw.trim()))),
    }
}

/// A phone number in E.164 (`+14155552671`). Numbers without a country code are read in
/// `region`'s numbering plan; the number must be valid there (libphonenumber's metadata).
pub fn normalize_phone(raw: &str, region: PhoneRegion) -> Result<String, KeyError> {
    let bad = |problem: String| KeyError { key: Key::Phone, problem };
    let text = raw.trim();
    if text.is_empty() {
        return Err(bad("is empty".to_owned()));
    }
    let number =
        phonenumber::parse(Some(region.0), text).map_err(|e| bad(format!("`{text}` is not a phone number: {e}")))?;
    if !phonenumber::is_valid(&number) {
        return Err(bad(format!("`{text}` is not a valid phone number (read with default region {region})")));
    }
    Ok(number.format().mode(phonenumber::Mode::E164).to_string())
}

/// A name in NFKC, case-folded, with runs of whitespace collapsed to one space and trimmed,
/// so `"  JOSÉ   García"`, `"josé garcía"` and the decomposed `"jose\u{301} garcia\u{301}"`
/// are one name.
pub fn normalize_name(raw: &str) -> Result<String, KeyError> {
    // NFKC before and after folding: folding can produce sequences NFKC composes.
    let folded: String = caseless::default_case_fold_str(&raw.nfkc().collect::<String>()).nfkc().collect();
    let name = folded.split_whitespace().collect::<Vec<_>>().join(" ");
    if name.is_empty() {
        return Err(KeyError { key: Key::FullName, problem: "is empty".to_owned() });
    }
    if name.chars().count() > 200 {
        return Err(KeyError { key: Key::FullName, problem: "is longer than 200 characters".to_owned() });
    }
    Ok(name)
}

/// The normalized identity keys of one submission; an absent key is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Keys {
    /// Normalized email.
    pub email: Option<String>,
    /// Normalized full name.
    pub full_name: Option<String>,
    /// Phone in E.164.
    pub phone: Option<String>,
}

impl Keys {
    /// Normalizes the keys a submission has, collecting every problem (not just the first).
    pub fn normalize(
        email: Option<&str>,
        full_name: Option<&str>,
        phone: Option<&str>,
        region: PhoneRegion,
    ) -> Result<Self, Vec<KeyError>> {
        let mut errors = Vec::new();
        let mut take = |result: Option<Result<String, KeyError>>| match result {
            Some(Ok(value)) => Some(value),
            Some(Err(error)) => {
                errors.push(error);
                None
            }
            None => None,
        };
        let keys = Self {
            email: take(email.map(normalize_email)),
            full_name: take(full_name.map(normalize_name)),
            phone: take(phone.map(|p| normalize_phone(p, region))),
        };
        if errors.is_empty() { Ok(keys) } else { Err(errors) }
    }

    /// The value of `key`.
    pub fn get(&self, key: Key) -> Option<&str> {
        match key {
            Key::Email => self.email.as_deref(),
            Key::FullName => self.full_name.as_deref(),
            Key::Phone => self.phone.as_deref(),
        }
    }

    /// How many keys are present.
    pub fn count(&self) -> usize {
        Key::ALL.iter().filter(|k| self.get(**k).is_some()).count()
    }

    /// The domain of the email (`gmail.com`), the derived routing field `email_domain`.
    pub fn email_domain(&self) -> Option<&str> {
        self.email.as_deref().and_then(|e| e.rsplit_once('@')).map(|(_, domain)| domain)
    }
}

/// Joins `first_name` and `last_name` into a full name (either may be missing).
pub fn join_name(first: Option<&str>, last: Option<&str>) -> Option<String> {
    let parts: Vec<&str> = [first, last].into_iter().flatten().map(str::trim).filter(|p| !p.is_empty()).collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_lowercased_and_checked() {
        assert_eq!(normalize_email("  Ann.Lee@Example.COM "), Ok("ann.lee@example.com".to_owned()));
        for bad in ["", "   ", "ann", "ann@", "@example.com", "ann@localhost", "ann lee@example.com", "a@@b.com"] {
            let error = normalize_email(bad).expect_err(bad);
            assert_eq!(error.key, Key::Email, "{bad}");
        }
    }

    #[test]
    fn phones_become_e164() {
        let us = PhoneRegion::default();
        for raw in ["(415) 555-2671", "415.555.2671", "+1 415 555 2671", "1-415-555-2671", " 4155552671 "] {
            assert_eq!(normalize_phone(raw, us).as_deref(), Ok("+14155552671"), "{raw}");
        }
        let gb: PhoneRegion = "gb".parse().expect("GB is a region");
        assert_eq!(normalize_phone("020 7946 0018", gb).as_deref(), Ok("+442079460018"));
        assert_eq!(normalize_phone("+44 20 7946 0018", us).as_deref(), Ok("+442079460018"));
        for bad in ["", "12", "not a phone", "+1 000 000 0000"] {
            assert_eq!(normalize_phone(bad, us).map_err(|e| e.key), Err(Key::Phone), "{bad}");
        }
        assert!("XX".parse::<PhoneRegion>().is_err());
    }

    #[test]
    fn names_are_nfkc_casefolded_and_collapsed() {
        let cases = [
            ("  JOSÉ   García ", "josé garcía"),
            ("jose\u{301} garci\u{301}a", "josé garcía"),
            ("Ｊｏｈｎ\tＳｍｉｔｈ", "john smith"),
            ("STRASSE Straße", "strasse strasse"),
            ("Ǆemal", "džemal"),
        ];
        for (raw, normal) in cases {
            assert_eq!(normalize_name(raw).as_deref(), Ok(normal), "{raw:?}");
        }
        assert!(normalize_name(" \u{3000} ").is_err());
    }

    #[test]
    fn keys_collect_every_problem() {
        let errors =
            Keys::normalize(Some("nope"), Some("Ann"), Some("12"), PhoneRegion::default()).expect_err("two bad keys");
        assert_eq!(errors.iter().map(|e| e.key).collect::<Vec<_>>(), [Key::Email, Key::Phone]);
        let keys = Keys::normalize(Some("Ann@Example.com"), None, Some("415 555 2671"), PhoneRegion::default())
            .expect("valid keys");
        assert_eq!((keys.count(), keys.email_domain()), (2, Some("example.com")));
        assert_eq!(join_name(Some(" Ann "), Some("Lee")), Some("Ann Lee".to_owned()));
        assert_eq!(join_name(None, Some(" ")), None);
    }
}
