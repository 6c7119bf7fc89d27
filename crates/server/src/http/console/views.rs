//! The console's HTML, written with maud (checked at compile time, every
//! value escaped). Pages are plain forms and links: they work without
//! JavaScript, which only adds the copy button, confirmation prompts and the
//! scope chip editor over the scopes textarea (`/console/static/console.js`).
//! Every input has a label, status is said in words (never by colour alone),
//! and field errors sit next to their field.

use chrono::{DateTime, Utc};
use keygate::v1 as pb;
use maud::{DOCTYPE, Markup, html};

use super::calls::PageError;

/// What every signed-in page shows in its header.
#[derive(Debug, Clone)]
pub struct Nav {
    /// The session's management key id.
    pub key_id: String,
    /// Its owner.
    pub owner_id: String,
    /// What the key may do, in words (`read`, `write`, `admin`).
    pub rights: &'static str,
    /// The session's CSRF token (for the sign-out form).
    pub csrf: String,
    /// Whether the session may change keys.
    pub can_write: bool,
    /// Whether the session holds `keys:admin`.
    pub is_admin: bool,
}

/// A whole page.
pub fn page(title: &str, nav: Option<&Nav>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Keygate console" }
                link rel="stylesheet" href="/console/static/console.css";
                script src="/console/static/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    span.brand { "Keygate console" }
                    @if let Some(nav) = nav {
                        nav aria-label="Main" {
                            a href="/console/keys" { "Keys" }
                            @if nav.can_write { a href="/console/keys/new" { "Create key" } }
                            a href="/console/audit" { "Audit log" }
                        }
                        div.who {
                            "Signed in with key " code { (short(&nav.key_id)) }
                            " (" (nav.owner_id) ", " (nav.rights) ") "
                            form method="post" action="/console/sign-out" {
                                input type="hidden" name="csrf" value=(nav.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main id="main" tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page's error banner.
pub fn error_banner(error: Option<&PageError>) -> Markup {
    html! {
        @if let Some(error) = error {
            div.error role="alert" {
                strong { "Error: " } (error.message)
            }
        }
    }
}

/// A notice (an action done).
pub fn notice(text: Option<&str>) -> Markup {
    html! {
        @if let Some(text) = text {
            div.notice role="status" { (text) }
        }
    }
}

/// The message next to `field`, if the error names it.
pub fn field_error(error: Option<&PageError>, field: &str) -> Markup {
    html! {
        @if let Some(message) = error.and_then(|e| e.on(field)) {
            p.field-error id=(format!("{field}-error")) { "⚠ " (message) }
        }
    }
}

/// The first 8 characters of an id.
pub fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// A protobuf timestamp as a time.
pub fn time(ts: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    ts.and_then(|ts| DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).unwrap_or(0)))
}

/// `2030-01-02 03:04 UTC`.
pub fn exact(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// "3 minutes ago" / "in 5 days".
pub fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds();
    let (n, past) = if secs >= 0 {
        (secs, true)
    } else {
        (-secs, false)
    };
    let (count, unit) = match n {
        0..60 => {
            return if past {
                "just now".into()
            } else {
                "in under a minute".into()
            };
        }
        60..3600 => (n / 60, "minute"),
        3600..86_400 => (n / 3600, "hour"),
        86_400..2_592_000 => (n / 86_400, "day"),
        2_592_000..31_536_000 => (n / 2_592_000, "month"),
        _ => (n / 31_536_000, "year"),
    };
    let plural = if count == 1 { "" } else { "s" };
    if past {
        format!("{count} {unit}{plural} ago")
    } else {
        format!("in {count} {unit}{plural}")
    }
}

/// A time shown relatively, the exact time on hover; `none` when unset.
pub fn when(ts: Option<&prost_types::Timestamp>, now: DateTime<Utc>, none: &str) -> Markup {
    html! {
        @match time(ts) {
            Some(t) => time datetime=(t.to_rfc3339()) title=(exact(t)) { (relative(t, now)) },
            None => span.muted { (none) },
        }
    }
}

/// A time shown exactly; `none` when unset.
pub fn at(ts: Option<&prost_types::Timestamp>, none: &str) -> Markup {
    html! {
        @match time(ts) {
            Some(t) => time datetime=(t.to_rfc3339()) { (exact(t)) },
            None => span.muted { (none) },
        }
    }
}

/// A status in words, with a symbol and a colour as extras.
pub fn badge(status: i32) -> Markup {
    let (class, symbol, text) = match pb::KeyStatus::try_from(status) {
        Ok(pb::KeyStatus::Active) => ("active", "✓", "Active"),
        Ok(pb::KeyStatus::Disabled) => ("disabled", "⏸", "Disabled"),
        Ok(pb::KeyStatus::Expired) => ("expired", "⌛", "Expired"),
        Ok(pb::KeyStatus::Revoked) => ("revoked", "✕", "Revoked"),
        Ok(pb::KeyStatus::Deleted) => ("deleted", "🗑", "Deleted"),
        _ => ("unknown", "?", "Unknown"),
    };
    html! {
        span class=(format!("badge {class}")) data-status=(text) {
            span aria-hidden="true" { (symbol) " " } (text)
        }
    }
}

/// Scopes in a line: the first three and how many more.
pub fn scopes_summary(scopes: &[String]) -> Markup {
    html! {
        @if scopes.is_empty() {
            span.muted { "none" }
        } @else {
            @for scope in scopes.iter().take(3) { code.chip { (scope) } " " }
            @if scopes.len() > 3 { span.muted title=(scopes.join(" ")) { "+" (scopes.len() - 3) " more" } }
        }
    }
}

/// A rate limit, or the server default.
pub fn rate_limit(limit: Option<u32>, default: u32) -> Markup {
    html! {
        @match limit {
            Some(n) => { (n) " / hour" },
            None => span.muted { "default (" (default) " / hour)" },
        }
    }
}

/// A select of `options` (value, label) with `selected` chosen.
pub fn select(name: &str, options: &[(&str, &str)], selected: &str) -> Markup {
    html! {
        select id=(name) name=(name) {
            @for (value, label) in options {
                option value=(value) selected[*value == selected] { (label) }
            }
        }
    }
}

/// The sign-in page.
pub fn sign_in(csrf: &str, message: Option<&str>, error: Option<&str>) -> Markup {
    page(
        "Sign in",
        None,
        html! {
            @if let Some(error) = error { div.error role="alert" { strong { "Error: " } (error) } }
            @if let Some(message) = message { div.notice role="status" { (message) } }
            p { "Paste a management key (a key with keys:read, keys:write or keys:admin). The console acts with exactly that key's rights until you sign out or the session ends." }
            form method="post" action="/console/sign-in" {
                input type="hidden" name="csrf" value=(csrf);
                label for="key" { "Management key" }
                input id="key" name="key" type="password" autocomplete="off" required autofocus;
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// A page saying what went wrong, with a way back.
pub fn error_page(nav: Option<&Nav>, error: &PageError) -> Markup {
    page(
        "Something went wrong",
        nav,
        html! {
            (error_banner(Some(error)))
            p { a href="/console/keys" { "Back to the keys" } }
        },
    )
}

/// The page showing a secret once (after create or rotate).
pub fn secret(nav: &Nav, key: &pb::ApiKey, secret: &str, rotated: Option<&str>) -> Markup {
    let title = if rotated.is_some() {
        "Key rotated"
    } else {
        "Key created"
    };
    page(
        title,
        Some(nav),
        html! {
            div.warning role="alert" {
                strong { "Copy this secret now. " }
                "It will not be shown again: Keygate keeps only a hash of it."
            }
            label for="secret" { "Secret of " (key.name) }
            div.copy {
                input id="secret" type="text" readonly value=(secret) autocomplete="off" spellcheck="false";
                button type="button" data-copy="secret" { "Copy" }
                span.copied role="status" aria-live="polite" {}
            }
            @if let Some(rotated) = rotated { p { (rotated) } }
            p { a href=(format!("/console/keys/{}", key.key_id)) { "Go to the key's page" } }
        },
    )
}

/// The key list's filters, as the query string gave them.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(default)]
pub struct ListFilters {
    /// Owner (admins).
    pub owner: String,
    /// Environment.
    pub environment: String,
    /// `active`, `disabled`, `expired`, `revoked`, `deleted` or empty.
    pub status: String,
    /// Part of the name.
    pub name: String,
    /// `7` or `30`: expiring within that many days.
    pub expiring: String,
    /// `30` or `90`: unused for that many days.
    pub unused: String,
    /// The page token.
    pub page: String,
}

impl ListFilters {
    /// Whether any filter is set.
    pub fn any(&self) -> bool {
        [
            &self.owner,
            &self.environment,
            &self.status,
            &self.name,
            &self.expiring,
            &self.unused,
        ]
        .iter()
        .any(|s| !s.is_empty())
    }

    /// The query string of these filters at page `token`.
    pub fn query(&self, token: &str) -> String {
        let pairs = [
            ("owner", &self.owner),
            ("environment", &self.environment),
            ("status", &self.status),
            ("name", &self.name),
            ("expiring", &self.expiring),
            ("unused", &self.unused),
        ];
        let mut out: Vec<String> = pairs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        if !token.is_empty() {
            out.push(format!("page={}", encode(token)));
        }
        out.join("&")
    }
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The key list.
#[allow(clippy::too_many_arguments)]
pub fn key_list(
    nav: &Nav,
    environments: &[String],
    filters: &ListFilters,
    keys: &[pb::ApiKey],
    next: &str,
    default_rate: u32,
    now: DateTime<Utc>,
    error: Option<&PageError>,
) -> Markup {
    let mut env_options = vec![("", "any")];
    env_options.extend(environments.iter().map(|e| (e.as_str(), e.as_str())));
    page(
        "Keys",
        Some(nav),
        html! {
            (error_banner(error))
            form.filters method="get" action="/console/keys" role="search" {
                @if nav.is_admin {
                    div { label for="owner" { "Owner" } input id="owner" name="owner" value=(filters.owner); }
                }
                div { label for="environment" { "Environment" } (select("environment", &env_options, &filters.environment)) }
                div { label for="status" { "Status" } (select("status", &[("", "any but deleted"), ("active", "Active"), ("disabled", "Disabled"), ("expired", "Expired"), ("revoked", "Revoked"), ("deleted", "Deleted")], &filters.status)) }
                div { label for="name" { "Name contains" } input id="name" name="name" value=(filters.name); }
                div { label for="expiring" { "Expiring" } (select("expiring", &[("", "any time"), ("7", "within 7 days"), ("30", "within 30 days")], &filters.expiring)) }
                div { label for="unused" { "Unused" } (select("unused", &[("", "any"), ("30", "for 30 days"), ("90", "for 90 days")], &filters.unused)) }
                div.buttons { button type="submit" { "Filter" } " " a href="/console/keys" { "Clear filters" } }
            }
            @if keys.is_empty() {
                div.empty {
                    @if filters.any() {
                        p { "No key matches these filters. " a href="/console/keys" { "Clear the filters" } " to see every key." }
                    } @else if nav.can_write {
                        p { "There are no keys yet. " a href="/console/keys/new" { "Create the first key" } "." }
                    } @else {
                        p { "There are no keys you may see. Ask an admin to create one." }
                    }
                }
            } @else {
                div.table-wrap {
                    table.keys {
                        caption.visually-hidden { "Keys" }
                        thead { tr {
                            th scope="col" { "Name" } th scope="col" { "Environment" } th scope="col" { "Status" }
                            th scope="col" { "Scopes" } th scope="col" { "Rate limit" } th scope="col" { "Last used" }
                            th scope="col" { "Expires" } th scope="col" { "Created" }
                        } }
                        tbody {
                            @for key in keys {
                                tr {
                                    td { a href=(format!("/console/keys/{}", key.key_id)) { (key.name) }
                                        @if nav.is_admin { br; span.muted { (key.owner_id) } } }
                                    td { (key.environment) }
                                    td { (badge(key.status)) }
                                    td { (scopes_summary(&key.scopes)) }
                                    td { (rate_limit(key.rate_limit_per_hour, default_rate)) }
                                    td { (when(key.last_used_at.as_ref(), now, "never")) }
                                    td { (when(key.expires_at.as_ref(), now, "never")) }
                                    td { (when(key.created_at.as_ref(), now, "")) }
                                }
                            }
                        }
                    }
                }
            }
            @if !next.is_empty() {
                p { a rel="next" href=(format!("/console/keys?{}", filters.query(next))) { "Next page →" } }
            }
        },
    )
}

/// What the create and edit forms show.
#[derive(Debug, Clone, Default)]
pub struct KeyFormView {
    /// Values to show (as posted, or the key's).
    pub form: super::forms::KeyForm,
    /// The key being edited (None: creating).
    pub key_id: Option<String>,
}

/// The create or edit form.
pub fn key_form(
    nav: &Nav,
    environments: &[String],
    view: &KeyFormView,
    default_rate: u32,
    error: Option<&PageError>,
) -> Markup {
    let form = &view.form;
    let editing = view.key_id.is_some();
    let (title, action) = match &view.key_id {
        Some(id) => ("Edit key", format!("/console/keys/{id}/edit")),
        None => ("Create key", "/console/keys".to_owned()),
    };
    let described = |field: &str| {
        error
            .and_then(|e| e.on(field))
            .map(|_| format!("{field}-error"))
    };
    let mut expiry_options = vec![];
    if editing {
        expiry_options.push(("keep", "keep as it is"));
    }
    expiry_options.extend([
        ("30d", "in 30 days"),
        ("90d", "in 90 days"),
        ("365d", "in 365 days"),
        ("custom", "on a date"),
        ("never", "never"),
    ]);
    let chosen = if form.expiry.is_empty() {
        if editing { "keep" } else { "90d" }
    } else {
        form.expiry.as_str()
    };
    page(
        title,
        Some(nav),
        html! {
            (error_banner(error))
            form.key-form method="post" action=(action) novalidate {
                input type="hidden" name="csrf" value=(form.csrf);
                @if editing { input type="hidden" name="etag" value=(form.etag); }
                @if !editing && nav.is_admin {
                    div.field {
                        label for="owner_id" { "Owner" }
                        input id="owner_id" name="owner_id" value=(form.owner_id) aria-describedby=[described("owner_id")];
                        (field_error(error, "owner_id"))
                    }
                }
                div.field {
                    label for="name" { "Name" }
                    input id="name" name="name" value=(form.name) required maxlength="200" aria-describedby=[described("name")];
                    (field_error(error, "name"))
                }
                @if !editing {
                    div.field {
                        label for="environment" { "Environment" }
                        select id="environment" name="environment" {
                            @for env in environments {
                                option value=(env) selected[*env == form.environment] { (env) }
                            }
                        }
                        (field_error(error, "environment"))
                    }
                }
                div.field {
                    label for="scopes" { "Scopes" }
                    p.hint id="scopes-hint" { "Separated by spaces, commas or lines: resource:action, resource:* or *." }
                    textarea id="scopes" name="scopes" rows="3" data-scope-chips aria-describedby=(described("scopes").unwrap_or_else(|| "scopes-hint".into())) { (form.scopes) }
                    (field_error(error, "scopes"))
                }
                fieldset.field {
                    legend { "Expires" }
                    @for (value, label) in &expiry_options {
                        label.radio {
                            input type="radio" name="expiry" value=(value) checked[*value == chosen];
                            " " (label)
                        }
                    }
                    label for="expires_on" { "Date (for “on a date”, UTC)" }
                    input id="expires_on" name="expires_on" type="date" value=(form.expires_on);
                    (field_error(error, "expires_at"))
                }
                div.field {
                    label for="ip_allowlist" { "IP allowlist" }
                    p.hint id="ip-hint" { "One CIDR network per line, such as 203.0.113.0/24; empty allows any address." }
                    textarea id="ip_allowlist" name="ip_allowlist" rows="3" aria-describedby=(described("ip_allowlist").unwrap_or_else(|| "ip-hint".into())) { (form.ip_allowlist) }
                    (field_error(error, "ip_allowlist"))
                }
                div.field {
                    label for="rate_limit_per_hour" { "Rate limit (requests per hour)" }
                    input id="rate_limit_per_hour" name="rate_limit_per_hour" inputmode="numeric" value=(form.rate_limit_per_hour) placeholder=(format!("default: {default_rate}")) aria-describedby=[described("rate_limit_per_hour")];
                    (field_error(error, "rate_limit_per_hour"))
                }
                div.field {
                    label for="metadata" { "Metadata" }
                    p.hint id="metadata-hint" { "One key = value per line." }
                    textarea id="metadata" name="metadata" rows="3" aria-describedby=(described("metadata").unwrap_or_else(|| "metadata-hint".into())) { (form.metadata) }
                    (field_error(error, "metadata"))
                }
                @for (field, message) in error.map(|e| e.fields.iter().collect::<Vec<_>>()).unwrap_or_default() {
                    @if !KNOWN_FIELDS.contains(&field.as_str()) {
                        p.field-error { "⚠ " (message) }
                    }
                }
                button type="submit" { (if editing { "Save changes" } else { "Create key" }) }
                " "
                a href=(view.key_id.as_ref().map_or("/console/keys".to_owned(), |id| format!("/console/keys/{id}"))) { "Cancel" }
            }
        },
    )
}

/// Form fields that show their own errors.
const KNOWN_FIELDS: [&str; 8] = [
    "owner_id",
    "name",
    "environment",
    "scopes",
    "expires_at",
    "ip_allowlist",
    "rate_limit_per_hour",
    "metadata",
];

/// Everything the key detail page shows.
#[derive(Debug)]
pub struct Detail<'a> {
    /// The key.
    pub key: &'a pb::ApiKey,
    /// Usage, last 24 hours and last 7 days (charts).
    pub usage: (Markup, Markup),
    /// The key's audit events, newest first.
    pub events: &'a [pb::AuditEvent],
    /// The server's default rate limit.
    pub default_rate: u32,
    /// A notice after an action.
    pub notice: Option<&'a str>,
    /// An action's error.
    pub error: Option<&'a PageError>,
}

/// The key detail page.
pub fn key_detail(nav: &Nav, detail: &Detail<'_>, now: DateTime<Utc>) -> Markup {
    let key = detail.key;
    let status = pb::KeyStatus::try_from(key.status).unwrap_or(pb::KeyStatus::Unspecified);
    let base = format!("/console/keys/{}", key.key_id);
    let mut metadata: Vec<_> = key.metadata.iter().collect();
    metadata.sort();
    let error = detail.error;
    let action = |name: &str, label: &str, confirm: &str| {
        html! {
            form.inline method="post" action=(format!("{base}/{name}")) data-confirm=(confirm) {
                input type="hidden" name="csrf" value=(nav.csrf);
                input type="hidden" name="etag" value=(key.etag);
                button type="submit" { (label) }
            }
        }
    };
    page(
        &format!("Key {}", key.name),
        Some(nav),
        html! {
            (notice(detail.notice))
            (error_banner(error))
            p { "Status: " (badge(key.status)) }
            dl.fields {
                dt { "Key id" } dd { code { (key.key_id) } }
                dt { "Owner" } dd { (key.owner_id) }
                dt { "Environment" } dd { (key.environment) }
                dt { "Scopes" } dd { @if key.scopes.is_empty() { span.muted { "none" } } @for s in &key.scopes { code.chip { (s) } " " } }
                dt { "IP allowlist" } dd { @if key.ip_allowlist.is_empty() { span.muted { "any address" } } @for n in &key.ip_allowlist { code { (n) } " " } }
                dt { "Rate limit" } dd { (rate_limit(key.rate_limit_per_hour, detail.default_rate)) }
                dt { "Secret" } dd { code { (key.prefix) "…" (key.hint) } }
                dt { "Created" } dd { (at(key.created_at.as_ref(), "")) }
                dt { "Updated" } dd { (at(key.updated_at.as_ref(), "")) }
                dt { "Expires" } dd { (at(key.expires_at.as_ref(), "never")) }
                dt { "Last used" } dd { (when(key.last_used_at.as_ref(), now, "never")) }
                @if key.revoked_at.is_some() {
                    dt { "Revoked" } dd { (at(key.revoked_at.as_ref(), "")) ": " (key.revoked_reason) }
                }
                @if key.delete_time.is_some() {
                    dt { "Deleted" } dd { (at(key.delete_time.as_ref(), "")) "; purged " (at(key.purge_time.as_ref(), "")) }
                }
            }
            h2 { "Metadata" }
            @if metadata.is_empty() { p.muted { "No metadata." } } @else {
                table { thead { tr { th scope="col" { "Key" } th scope="col" { "Value" } } }
                    tbody { @for (k, v) in metadata { tr { td { code { (k) } } td { (v) } } } } }
            }
            h2 { "Credentials" }
            table {
                thead { tr { th scope="col" { "Secret" } th scope="col" { "Issued" } th scope="col" { "Works until" } th scope="col" { "Last used" } } }
                tbody { @for c in &key.credentials { tr {
                    td { code { (key.prefix) (c.lookup_id) "…" (c.hint) } }
                    td { (at(c.created_at.as_ref(), "")) }
                    td { (at(c.expires_at.as_ref(), "with the key")) }
                    td { (when(c.last_used_at.as_ref(), now, "never")) }
                } } }
            }
            @if nav.can_write {
                h2 { "Actions" }
                div.actions {
                    @if matches!(status, pb::KeyStatus::Active | pb::KeyStatus::Disabled | pb::KeyStatus::Expired) {
                        a.button href=(format!("{base}/edit")) { "Edit" }
                        form.inline method="post" action=(format!("{base}/rotate")) data-confirm="Issue a new secret for this key?" {
                            input type="hidden" name="csrf" value=(nav.csrf);
                            input type="hidden" name="etag" value=(key.etag);
                            label for="grace" { "Old secret keeps working" }
                            (select("grace", &[("0", "not at all"), ("1h", "for 1 hour"), ("24h", "for 24 hours"), ("7d", "for 7 days")], "24h"))
                            " " button type="submit" { "Rotate" }
                            (field_error(error, "grace"))
                        }
                    }
                    @if status == pb::KeyStatus::Active { (action("disable", "Disable", "Disable this key? It stops authorizing until enabled.")) }
                    @if status == pb::KeyStatus::Disabled { (action("enable", "Enable", "")) }
                    @if status == pb::KeyStatus::Deleted {
                        (action("undelete", "Undelete", ""))
                    } @else {
                        (action("delete", "Delete", "Delete this key? It can be undeleted until it is purged."))
                    }
                }
                @if status != pb::KeyStatus::Revoked && status != pb::KeyStatus::Deleted {
                    form.revoke method="post" action=(format!("{base}/revoke")) {
                        h3 { "Revoke" }
                        p { "Revoking ends the key for good; it cannot be undone." }
                        input type="hidden" name="csrf" value=(nav.csrf);
                        input type="hidden" name="etag" value=(key.etag);
                        div.field {
                            label for="reason" { "Reason (required)" }
                            input id="reason" name="reason" required;
                            (field_error(error, "reason"))
                        }
                        div.field {
                            label for="confirm" { "Type the key's name, " strong { (key.name) } ", to confirm" }
                            input id="confirm" name="confirm" required autocomplete="off";
                            (field_error(error, "confirm"))
                        }
                        button.danger type="submit" { "Revoke key" }
                    }
                }
            }
            h2 { "Usage" }
            (detail.usage.0)
            (detail.usage.1)
            h2 { "Audit events" }
            (audit_table(detail.events, false))
            p { a href=(format!("/console/audit?key={}", key.key_id)) { "All audit events of this key" } }
        },
    )
}

/// Audit events as a table.
pub fn audit_table(events: &[pb::AuditEvent], with_key: bool) -> Markup {
    html! {
        @if events.is_empty() {
            p.muted { "No audit events." }
        } @else {
            div.table-wrap { table.audit {
                thead { tr {
                    th scope="col" { "Time" } th scope="col" { "Method" }
                    @if with_key { th scope="col" { "Key" } }
                    th scope="col" { "Actor" } th scope="col" { "From" } th scope="col" { "Changes" }
                } }
                tbody { @for e in events { tr {
                    td { (at(e.time.as_ref(), "")) }
                    td { (e.method) }
                    @if with_key { td { a href=(format!("/console/keys/{}", e.key_id)) { code { (short(&e.key_id)) } } br; span.muted { (e.owner_id) " / " (e.environment) } } }
                    td { @if e.actor_key_id.is_empty() { span.muted { "(bootstrap)" } } @else { code title=(e.actor_key_id) { (short(&e.actor_key_id)) } " " span.muted { (e.actor_owner_id) } } }
                    td { (e.peer_address) }
                    td {
                        @if !e.reason.is_empty() { p { "Reason: " (e.reason) } }
                        @if !e.changes.is_empty() { ul.changes { @for c in &e.changes {
                            li { code { (c.field) } ": " del { (c.old_value) } " → " ins { (c.new_value) } }
                        } } }
                    }
                } } }
            } }
        }
    }
}

/// The audit log's filters, as the query string gave them.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(default)]
pub struct AuditFilters {
    /// Key id.
    pub key: String,
    /// Actor key id.
    pub actor: String,
    /// Method, such as `RevokeKey`.
    pub method: String,
    /// From (`datetime-local`, UTC).
    pub from: String,
    /// To (`datetime-local`, UTC).
    pub to: String,
    /// The page token.
    pub page: String,
}

impl AuditFilters {
    /// The query string of these filters at page `token`.
    pub fn query(&self, token: &str) -> String {
        [
            ("key", &self.key),
            ("actor", &self.actor),
            ("method", &self.method),
            ("from", &self.from),
            ("to", &self.to),
            ("page", &token.to_owned()),
        ]
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&")
    }
}

/// Methods that write audit events.
const METHODS: [&str; 11] = [
    "CreateKey",
    "RotateKey",
    "RevokeKey",
    "UpdateKeyExpiry",
    "DisableKey",
    "EnableKey",
    "UpdateKey",
    "DeleteKey",
    "UndeleteKey",
    "PurgeKey",
    "Bootstrap",
];

/// The audit log.
pub fn audit_log(
    nav: &Nav,
    filters: &AuditFilters,
    events: &[pb::AuditEvent],
    next: &str,
    error: Option<&PageError>,
) -> Markup {
    let mut methods = vec![("", "any")];
    methods.extend(METHODS.iter().map(|m| (*m, *m)));
    page(
        "Audit log",
        Some(nav),
        html! {
            (error_banner(error))
            form.filters method="get" action="/console/audit" role="search" {
                div { label for="key" { "Key id" } input id="key" name="key" value=(filters.key); (field_error(error, "key_id")) }
                div { label for="actor" { "Actor key id" } input id="actor" name="actor" value=(filters.actor); }
                div { label for="method" { "Method" } (select("method", &methods, &filters.method)) }
                div { label for="from" { "From (UTC)" } input id="from" name="from" type="datetime-local" value=(filters.from); (field_error(error, "start_time")) }
                div { label for="to" { "To (UTC)" } input id="to" name="to" type="datetime-local" value=(filters.to); (field_error(error, "end_time")) }
                div.buttons { button type="submit" { "Filter" } " " a href="/console/audit" { "Clear filters" } }
            }
            (audit_table(events, true))
            @if !next.is_empty() {
                p { a rel="next" href=(format!("/console/audit?{}", filters.query(next))) { "Older events →" } }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_naturally() {
        let now = Utc::now();
        assert_eq!(
            relative(now - chrono::Duration::seconds(200), now),
            "3 minutes ago"
        );
        assert_eq!(
            relative(now - chrono::Duration::hours(1), now),
            "1 hour ago"
        );
        assert_eq!(relative(now + chrono::Duration::days(3), now), "in 3 days");
        assert_eq!(relative(now, now), "just now");
    }

    #[test]
    fn values_are_escaped_and_statuses_named() {
        let html = page("<x>", None, html! {}).into_string();
        assert!(html.contains("&lt;x&gt;"));
        let badge = badge(pb::KeyStatus::Revoked as i32).into_string();
        assert!(badge.contains("Revoked"));
        assert_eq!(encode("a b&c"), "a%20b%26c");
    }
}
