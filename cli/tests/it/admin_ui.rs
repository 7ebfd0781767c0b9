//! The admin UI in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by `./dev test`) driving `offer-router serve` on a real
//! database with the mock partners. An operator signs in with the keyboard, types a rule with a
//! type error and sees the finding at its line, fixes it, sees the change impact, saves, sees
//! the tree become active and a posted lead routed by the new rule; takes a partner down and
//! sees its circuit open on the dashboard, brings it back and replays its dead letters from the
//! UI. A viewer is refused a change; requests without the CSRF token or without any
//! credentials are refused. Every page is photographed into `target/tmp/admin-ui/` (at
//! 1280 px and at a phone's width).

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::harness::{
    Daemon, Scratch, active_tree, alone, client, free_local_addr, offer_router, poll, serve_examples, site_key, submit,
    url_of, wait_for, wait_for_active_tree,
};

const TOKEN: &str = "ui-admin-token";
const EDITOR: (&str, &str) = ("erin", "erin's long password");
const VIEWER: (&str, &str) = ("vic", "vic's long password");
/// The partner the new rule sends leads to, and takes down.
const PARTNER: &str = "westbrook_university";
/// How long the browser waits for what a step expects.
const WAIT: Duration = Duration::from_secs(30);

/// A headless Chromium through chromedriver; both die with the test.
struct Browser {
    client: Client,
    driver: Child,
    base: String,
    shots: PathBuf,
}

impl Browser {
    async fn start(base: String, profile: &std::path::Path) -> Self {
        let port = free_local_addr().port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver (Debian's chromium-driver; `./dev test` installs it)");
        let capabilities = json!({ "goog:chromeOptions": { "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1280,900", "--hide-scrollbars", format!("--user-data-dir={}", profile.display()),
        ]}});
        let capabilities = capabilities.as_object().cloned().expect("an object");
        let url = format!("http://127.0.0.1:{port}");
        let client = wait_for("chromedriver and a Chromium session", Duration::from_secs(30), || {
            let (capabilities, url) = (capabilities.clone(), url.clone());
            async move {
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(capabilities)
                    .connect(&url)
                    .await
                    .ok()
            }
        })
        .await;
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("admin-ui");
        std::fs::create_dir_all(&shots).expect("the screenshots' folder");
        Self { client, driver, base, shots }
    }

    async fn open(&self, fragment: &str) {
        self.client.goto(&format!("{}/admin{fragment}", self.base)).await.expect("navigate");
    }

    async fn wait(&self, css: &str) -> Element {
        match self.client.wait().at_most(WAIT).for_element(Locator::Css(css)).await {
            Ok(element) => element,
            Err(e) => {
                self.shot("failure").await;
                panic!("no `{css}` within {WAIT:?}: {e} (screenshot: {})", self.shots.join("failure.png").display())
            }
        }
    }

    /// Waits until the text of `css` contains `text`; returns the whole text.
    async fn wait_text(&self, css: &str, text: &str) -> String {
        let found = poll(WAIT, || async {
            let element = self.client.find(Locator::Css(css)).await.ok()?;
            let shown = element.text().await.ok()?;
            shown.contains(text).then_some(shown)
        })
        .await;
        match found {
            Some(shown) => shown,
            None => {
                let shown = match self.client.find(Locator::Css(css)).await {
                    Ok(e) => e.text().await.unwrap_or_default(),
                    Err(_) => "(absent)".to_owned(),
                };
                self.shot("failure").await;
                panic!("`{css}` did not show {text:?} within {WAIT:?}; it shows: {shown}")
            }
        }
    }

    /// Clicks `css` once it is there. A click another element intercepts (a toast over the
    /// header, for the seconds it shows) is tried again until it lands, within [`WAIT`].
    async fn click(&self, css: &str) {
        let element = self.wait(css).await;
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            match element.clone().click().await {
                Ok(_) => return,
                Err(e) if e.to_string().contains("click intercepted") && std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    self.shot("failure").await;
                    panic!("click `{css}`: {e}")
                }
            }
        }
    }

    async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client.execute(script, args).await.unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::write(self.shots.join(format!("{name}.png")), png).expect("save the screenshot");
    }

    /// Signs in with the keyboard only: the user field has the focus, Tab to the password,
    /// Enter submits.
    async fn sign_in(&self, (user, password): (&str, &str)) {
        self.open("").await;
        self.wait("#sign-in").await;
        let focused = self.js("return document.activeElement.id", vec![]).await;
        assert_eq!(focused, "user", "the sign-in form starts at the user field");
        let active = self.client.active_element().await.expect("the focused element");
        active.send_keys(&format!("{user}\u{e004}{password}\u{e007}")).await.expect("type");
        self.wait_text("#who-name", user).await;
    }

    /// Whether the page fits the window's width (no sideways scrolling).
    async fn fits_width(&self) -> bool {
        self.js("return document.documentElement.scrollWidth <= window.innerWidth + 1", vec![]).await == json!(true)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver leads its own process group, with the browsers it started.
        if let Ok(pid) = i32::try_from(self.driver.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

/// `offer-router hash-password` of `password`.
fn hash(password: &str) -> String {
    use std::io::Write;
    let mut child = offer_router()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run offer-router hash-password");
    writeln!(child.stdin.take().expect("stdin"), "{password}").expect("write the password");
    let output = child.wait_with_output().expect("hash-password");
    assert!(output.status.success());
    String::from_utf8(output.stdout).expect("UTF-8").trim().to_owned()
}

fn ui_lead(email: &str) -> Value {
    json!({
        "email": email, "first_name": "Uma", "last_name": "Ito", "phone": "415 555 2671",
        "fields": { "state": "CA", "age": 30, "program": "ui_test" }
    })
}

async fn rule_of(pool: &PgPool, submission: uuid::Uuid) -> Option<(String, String)> {
    sqlx::query_as("SELECT rule_name, state FROM leads WHERE submission_id = $1 AND rule_name IS NOT NULL")
        .bind(submission)
        .fetch_optional(pool)
        .await
        .ok()
        .flatten()
}

#[sqlx::test(migrations = false)]
async fn an_operator_runs_the_system_from_the_admin_ui(pool: PgPool) {
    let _turn = alone().await;
    let scratch = Scratch::new("admin-ui");
    let users = format!("{} editor {}\n{} viewer {}\n", EDITOR.0, hash(EDITOR.1), VIEWER.0, hash(VIEWER.1));
    let users_file = scratch.write("admin-users", users);
    let database_url = url_of(&pool);
    let (addr, mock): (SocketAddr, SocketAddr) = (free_local_addr(), free_local_addr());
    let mut command = serve_examples(&database_url, addr, mock);
    command
        .env("ADMIN_TOKEN", TOKEN)
        .env("ADMIN_USERS_FILE", &users_file)
        .env("PARTNERS_REFRESH_SECS", "1")
        .env("QUEUE_METRICS_SECS", "1");
    let mut daemon = Daemon::spawn("offer-router", addr, &mut command, Some(scratch.path().join("daemon.log")));
    daemon.ready().await;
    let first_tree = wait_for_active_tree(&pool).await;
    let http = client(Duration::from_secs(10));
    let key = site_key(&database_url, "degreefinder");
    let base = format!("http://{addr}");

    // A partner that gives up fast and opens its circuit for a few seconds, for the outage.
    let (_, mut partner) = admin(&http, &base, reqwest::Method::GET, &format!("/api/partners/{PARTNER}"), None).await;
    let mut config = partner["partner"].take();
    config["max_retries"] = json!(1);
    config["backoff_base_ms"] = json!(100);
    config["backoff_cap_ms"] = json!(200);
    config["breaker"]["open_secs"] = json!(4);
    let (status, answer) =
        admin(&http, &base, reqwest::Method::PUT, &format!("/api/partners/{PARTNER}"), Some(config)).await;
    assert_eq!(status, 200, "{answer}");

    let browser = Browser::start(base.clone(), &scratch.path().join("chromium")).await;

    // ---- sign in (keyboard only), the dashboard ----
    browser.sign_in(EDITOR).await;
    browser.wait("#view-dashboard").await;
    browser.wait("#chart-throughput .uplot").await;

    // ---- rules: a type error shown at its line, fixed, its impact, saved, active ----
    browser.open("#/rules").await;
    let editor = browser.wait("#rules-text").await;
    wait_for("the stored rules in the editor", WAIT, || async {
        editor.prop("value").await.ok().flatten().is_some_and(|v| v.contains("block-test-traffic"))
    })
    .await;
    browser.wait_text("#check-status", "checked in").await;
    let stored = editor.prop("value").await.expect("value").expect("text");
    // The new rule starts on the line after the last one; its `when` is its third line.
    let broken_line = stored.trim_end().lines().count() + 3;
    // Type the new rule at the end, as an author would.
    browser.js("const t = document.getElementById('rules-text'); t.focus(); t.setSelectionRange(t.value.length, t.value.length);", vec![]).await;
    let typed = "\n  - name: ui-rule\n    priority: 1\n    when: site == \"degreefinder\" and age == \"ui_test\"\n    route: westbrook_university";
    let typed = if stored.ends_with('\n') { &typed[1..] } else { typed };
    editor.send_keys(typed).await.expect("type the rule");
    let marker = browser.wait(&format!(".editor .gn.sev-error[data-line='{broken_line}']")).await;
    assert!(
        marker.attr("title").await.expect("title").is_some_and(|t| t.starts_with("type:")),
        "the marker names the finding"
    );
    browser.wait_text("#findings", "type").await;
    let listed = browser.wait(".finding.sev-error[data-code='type']").await;
    assert_eq!(listed.attr("data-line").await.expect("attr"), Some(broken_line.to_string()));
    browser.wait_text("#impact", "Fix the errors").await;
    browser.shot("rules-type-error").await;

    // Fix it: the condition reads `program`, not `age`.
    let fixed = editor
        .prop("value")
        .await
        .expect("value")
        .expect("text")
        .replace("age == \"ui_test\"", "program == \"ui_test\"");
    browser
        .js("const t = document.getElementById('rules-text'); t.value = arguments[0]; t.dispatchEvent(new Event('input'));", vec![json!(fixed)])
        .await;
    browser.wait_text("#check-status", "0 errors").await;
    assert!(browser.client.find(Locator::Css(".editor .gn.sev-error")).await.is_err(), "no error marker is left");
    let impact = browser.wait_text("#impact", "would move").await;
    assert!(impact.contains("ui-rule → westbrook_university"), "{impact}");
    assert!(impact.contains("\"program\":\"ui_test\""), "the witness lead is shown: {impact}");
    browser.shot("rules-impact").await;

    browser.click("#save-rules").await;
    browser.wait_text("#compile-status", "Rules v2").await;
    let new_tree = wait_for("the saved rules' tree to become active", WAIT, || async {
        active_tree(&pool).await.filter(|&tree| tree > first_tree)
    })
    .await;
    browser.wait_text("#compile-status", &format!("compiled as tree v{new_tree} and routing leads")).await;
    browser.wait_text("#active-tree", &format!("tree v{new_tree}")).await;
    browser.shot("rules-active").await;
    let lead = submit(&http, addr, &key, &ui_lead("uma.ito@gmail.com")).await;
    let (rule, _) = wait_for("the lead routed by the new rule", WAIT, || rule_of(&pool, lead)).await;
    assert_eq!(rule, "ui-rule");
    wait_for("the delivery to settle", WAIT, || async {
        rule_of(&pool, lead).await.is_some_and(|(_, state)| state == "accepted")
    })
    .await;

    // ---- the lead's story ----
    browser.open(&format!("#/leads/{lead}")).await;
    browser.wait_text("#lead-decision", "ui-rule").await;
    browser.wait_text("#lead-deliveries", "accepted").await;
    browser.shot("lead-story").await;
    browser.open("#/leads").await;
    browser.wait_text("#lead-results", &lead.to_string()).await;
    browser.shot("leads").await;

    // ---- an outage: the partner fails, its circuit opens on the dashboard ----
    let control = format!("http://{mock}/control/{PARTNER}");
    let down = http.put(&control).json(&json!({"mode": "server_error"})).send().await.expect("switch the mock");
    assert!(down.status().is_success());
    browser.open("#/dashboard").await;
    let failed = submit(&http, addr, &key, &ui_lead("dora.dead@gmail.com")).await;
    browser.wait(&format!("[data-circuit='{PARTNER}'][data-state='open']")).await;
    browser.wait_text("#tile-open", "1").await;
    browser.shot("dashboard-circuit-open").await;

    // ---- back up: replay its dead letters from the UI ----
    let up = http.put(&control).json(&json!({"mode": "accept"})).send().await.expect("switch the mock");
    assert!(up.status().is_success());
    let dlq = format!("partner_{PARTNER}_dlq");
    browser.open(&format!("#/dlq/{dlq}")).await;
    browser.wait_text("#dlq-letters", "Letters in").await;
    browser.shot("dead-letters").await;
    browser.click("#replay-all").await;
    wait_for("the replayed lead to be delivered", Duration::from_secs(60), || async {
        sqlx::query_scalar::<_, String>("SELECT state FROM leads WHERE submission_id = $1")
            .bind(failed)
            .fetch_optional(&pool)
            .await
            .ok()
            .flatten()
            .is_some_and(|state| state == "accepted")
    })
    .await;
    browser.open("#/dashboard").await;
    browser.wait(&format!("[data-circuit='{PARTNER}'][data-state='closed']")).await;

    // ---- partners, the audit log ----
    browser.open("#/partners").await;
    browser.wait(&format!("[data-partner-row='{PARTNER}']")).await;
    browser.click(&format!("[data-partner='{PARTNER}']")).await;
    browser.wait("#partner-config").await;
    browser.shot("partners").await;
    browser.open("#/audit").await;
    let audit = browser.wait_text("#audit-list", "PUT /api/rules").await;
    assert!(audit.contains(EDITOR.0) && audit.contains("/replay"), "{audit}");
    browser.shot("audit").await;

    // ---- a phone's width: every page fits ----
    browser.client.set_window_size(390, 844).await.expect("resize");
    for (page, ready) in
        [("#/dashboard", "#dash-circuits table"), ("#/rules", "#rules-text"), ("#/leads", "#lead-results")]
    {
        browser.open(page).await;
        browser.wait(ready).await;
        assert!(browser.fits_width().await, "{page} scrolls sideways on a phone");
    }
    browser.shot("rules-phone").await;
    browser.client.set_window_size(1280, 900).await.expect("resize");

    // ---- a viewer reads but cannot change ----
    browser.click("#sign-out").await;
    browser.sign_in(VIEWER).await;
    browser.open("#/rules").await;
    let save = browser.wait("#save-rules").await;
    assert!(!save.is_enabled().await.expect("enabled?"), "a viewer's save button is off");
    let refused = browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/admin/session').then(r => r.json())
               .then(s => fetch('/api/rules/ui-rule/disable', {method: 'POST', headers: {'X-CSRF-Token': s.csrf_token}}))
               .then(r => r.json().then(b => done([r.status, b.code])));",
            vec![],
        )
        .await
        .expect("the viewer's attempt");
    assert_eq!(refused, json!([403, "forbidden"]));

    // ---- without the CSRF token, or without credentials: refused ----
    let cookie_client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let signed = cookie_client
        .post(format!("{base}/admin/session"))
        .json(&json!({"user": EDITOR.0, "password": EDITOR.1}))
        .send()
        .await
        .expect("sign in");
    let cookie = signed.headers()["set-cookie"].to_str().expect("ascii").split(';').next().expect("cookie").to_owned();
    let no_csrf = cookie_client
        .post(format!("{base}/api/rules/ui-rule/disable"))
        .header("Cookie", &cookie)
        .send()
        .await
        .expect("post");
    assert_eq!(no_csrf.status().as_u16(), 403);
    let nobody = cookie_client.post(format!("{base}/api/rules/ui-rule/disable")).send().await.expect("post");
    assert_eq!(nobody.status().as_u16(), 401);
    let enabled: bool =
        sqlx::query_scalar("SELECT enabled FROM rules WHERE name = 'ui-rule'").fetch_one(&pool).await.expect("rule");
    assert!(enabled, "no refused request changed the rule");

    drop(browser);
    daemon.assert_alive();
}

/// An admin API call with the token.
async fn admin(
    http: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http.request(method, format!("{base}{path}")).bearer_auth(TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("admin call");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}
