//! A partner's HTTP adapter: its request templates compiled once, a lead rendered into the
//! request, the request sent, the answer classified. The deliver worker calls it for every
//! lead; the admin API's "send a test lead" calls it once and shows what was sent and what
//! came back. One adapter, so a test lead is exactly what a real one would be.
//!
//! Templates (URL, header values, string values of the body) are minijinja expressions over
//! `lead` (the routed message: `lead.submission_id`, `lead.site`, `lead.fields.<name>`,
//! `lead.route`, ...), `person` (`person.email`, `person.full_name`, `person.phone`, normalized)
//! and `env` (the deliver worker's `PARTNER_*` environment variables: secrets are never stored).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use crate::message::PartnerLead;
use crate::partners::{PartnerConfig, Verdict};
use crate::{Error, Result};

/// The request of one lead, rendered from the partner's templates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rendered {
    /// The HTTP method.
    pub method: String,
    /// The URL.
    pub url: String,
    /// The configured headers (the adapter adds `Idempotency-Key` and the content type).
    pub headers: BTreeMap<String, String>,
    /// The body: JSON, or for `form` encoding an object of fields.
    pub body: Value,
    /// Whether the body is sent as `application/x-www-form-urlencoded`.
    pub form: bool,
}

impl Rendered {
    /// The body as sent: JSON text, or the form's `key=value` pairs.
    pub fn body_text(&self) -> String {
        if self.form {
            self.form_fields().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
        } else {
            self.body.to_string()
        }
    }

    fn form_fields(&self) -> Vec<(String, String)> {
        self.body
            .as_object()
            .map(|m| {
                m.iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned))).collect()
            })
            .unwrap_or_default()
    }
}

/// What one call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status; `None` when no answer came.
    pub status: Option<u16>,
    /// The answer's body.
    pub body: String,
    /// The partner's `Retry-After`, in seconds.
    pub retry_after: Option<Duration>,
    /// How the answer is classified.
    pub verdict: Verdict,
    /// What went wrong, for a retryable or permanent answer.
    pub error: Option<String>,
    /// How long the call took.
    pub elapsed: Duration,
}

/// A partner's configuration with its templates compiled and its HTTP method parsed.
pub struct Adapter {
    partner: PartnerConfig,
    method: reqwest::Method,
    templates: minijinja::Environment<'static>,
}

impl Adapter {
    /// Compiles `partner`'s templates; an invalid one (or method) is an `InvalidPartner` error
    /// naming it.
    pub fn new(partner: &PartnerConfig) -> Result<Self> {
        let invalid = |what: String| Error::InvalidPartner(format!("{}: {what}", partner.name));
        let method = reqwest::Method::from_bytes(partner.request.method.as_bytes())
            .map_err(|_| invalid(format!("invalid HTTP method `{}`", partner.request.method)))?;
        let mut sources = vec![("url".to_owned(), partner.request.url.clone())];
        for (name, value) in &partner.request.headers {
            sources.push((format!("header:{name}"), value.clone()));
        }
        let mut body = Vec::new();
        collect_templates(&partner.request.body, String::new(), &mut body);
        sources.extend(body.into_iter().map(|(path, text)| (format!("body:{path}"), text)));
        let mut templates = minijinja::Environment::new();
        for (template, source) in sources {
            templates
                .add_template_owned(template.clone(), source)
                .map_err(|e| invalid(format!("invalid template `{template}`: {e}")))?;
        }
        Ok(Self { partner: partner.clone(), method, templates })
    }

    /// The partner's configuration.
    pub fn partner(&self) -> &PartnerConfig {
        &self.partner
    }

    /// The request for `lead` as `person`, with `env` for the templates' `env.NAME`.
    pub fn render(
        &self,
        lead: &PartnerLead,
        person: &Value,
        env: &BTreeMap<String, String>,
    ) -> Result<Rendered, minijinja::Error> {
        let ctx = json!({ "lead": lead, "person": person, "env": env });
        let render = |name: &str| self.templates.get_template(name)?.render(&ctx);
        let mut headers = BTreeMap::new();
        for name in self.partner.request.headers.keys() {
            headers.insert(name.clone(), render(&format!("header:{name}"))?);
        }
        Ok(Rendered {
            method: self.method.to_string(),
            url: render("url")?,
            headers,
            body: self.render_body(&self.partner.request.body, String::new(), &ctx)?,
            form: self.partner.request.encoding == "form",
        })
    }

    fn render_body(&self, node: &Value, path: String, ctx: &Value) -> Result<Value, minijinja::Error> {
        Ok(match node {
            Value::String(_) => Value::String(self.templates.get_template(&format!("body:{path}"))?.render(ctx)?),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), self.render_body(v, format!("{path}/{k}"), ctx)?)))
                    .collect::<Result<_, minijinja::Error>>()?,
            ),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.render_body(v, format!("{path}/{i}"), ctx))
                    .collect::<Result<_, minijinja::Error>>()?,
            ),
            other => other.clone(),
        })
    }

    /// The `Idempotency-Key` of `lead`'s calls to this partner: the same for every attempt.
    pub fn idempotency_key(&self, lead: &PartnerLead) -> String {
        format!("{}:{}", lead.lead.submission_id, self.partner.name)
    }

    /// Renders and sends `lead`'s request; never fails, the answer says what happened (a
    /// template that does not render is a permanent error).
    pub async fn call(
        &self,
        client: &reqwest::Client,
        lead: &PartnerLead,
        person: &Value,
        env: &BTreeMap<String, String>,
    ) -> Answer {
        match self.render(lead, person, env) {
            Ok(rendered) => self.send(client, &rendered, &self.idempotency_key(lead)).await,
            Err(error) => Answer {
                status: None,
                body: String::new(),
                retry_after: None,
                verdict: Verdict::Permanent,
                error: Some(format!("cannot build the request: {error}")),
                elapsed: Duration::ZERO,
            },
        }
    }

    /// Sends a rendered request with the partner's timeout and classifies the answer
    /// ([`PartnerConfig::classify`]).
    pub async fn send(&self, client: &reqwest::Client, rendered: &Rendered, idempotency_key: &str) -> Answer {
        let started = Instant::now();
        let timeout = Duration::from_millis(u64::from(self.partner.timeout_ms));
        let mut builder = client
            .request(self.method.clone(), &rendered.url)
            .timeout(timeout)
            .header("Idempotency-Key", idempotency_key);
        for (name, value) in &rendered.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        builder = if rendered.form { builder.form(&rendered.form_fields()) } else { builder.json(&rendered.body) };
        let failed = |error: String| Answer {
            status: None,
            body: String::new(),
            retry_after: None,
            verdict: Verdict::Retryable,
            error: Some(error),
            elapsed: started.elapsed(),
        };
        match builder.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let body = response.text().await.unwrap_or_default();
                let verdict = self.partner.classify(status, &body);
                let error = matches!(verdict, Verdict::Retryable | Verdict::Permanent)
                    .then(|| format!("HTTP {status}: {}", excerpt(&body, 200)));
                Answer { status: Some(status), body, retry_after, verdict, error, elapsed: started.elapsed() }
            }
            Err(error) if error.is_timeout() => failed(format!("timed out after {} ms", timeout.as_millis())),
            Err(error) => failed(format!("request failed: {error}")),
        }
    }
}

/// The first `max` characters of `text`.
pub fn excerpt(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

fn collect_templates(node: &Value, path: String, out: &mut Vec<(String, String)>) {
    match node {
        Value::String(text) => out.push((path, text.clone())),
        Value::Object(map) => map.iter().for_each(|(k, v)| collect_templates(v, format!("{path}/{k}"), out)),
        Value::Array(items) => {
            items.iter().enumerate().for_each(|(i, v)| collect_templates(v, format!("{path}/{i}"), out))
        }
        _ => {}
    }
}
