//! What each notification says: a subject and a plain-text body, written from the kind, the
//! facts in its payload (dates, plan, sizes) and the organisation's name when it is sent.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// A message ready to send.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Message {
    pub subject: String,
    pub body: String,
}

/// What a breach notice tells the person, read from the breach register when it is sent.
pub(crate) struct BreachFacts<'a> {
    pub detected_at: DateTime<Utc>,
    pub description: &'a str,
}

fn date(payload: &Value, key: &str) -> String {
    payload
        .get(key)
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|at| {
            at.with_timezone(&Utc)
                .format("%-d %B %Y, %H:%M UTC")
                .to_string()
        })
        .unwrap_or_else(|| "(unknown)".to_owned())
}

fn text<'a>(payload: &'a Value, key: &str) -> &'a str {
    payload.get(key).and_then(Value::as_str).unwrap_or("")
}

/// `bytes` as the plans count them: GB of 10⁹ bytes, with one decimal below 10 GB.
pub(crate) fn size(bytes: u64) -> String {
    const GB: f64 = 1_000_000_000.0;
    let gb = bytes as f64 / GB;
    if gb >= 10.0 {
        format!("{gb:.0} GB")
    } else if gb >= 0.1 {
        format!("{gb:.1} GB")
    } else {
        format!("{} MB", (bytes as f64 / 1_000_000.0).ceil())
    }
}

/// A plan's name as the terms write it (`standard` → `Standard`).
fn plan(payload: &Value) -> String {
    let name = text(payload, "plan");
    let mut chars = name.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn bytes(payload: &Value, key: &str) -> String {
    payload
        .get(key)
        .and_then(Value::as_u64)
        .map(size)
        .unwrap_or_else(|| "(unknown)".to_owned())
}

const SIGN_OFF: &str =
    "\n\n-- \nThis message was sent by Custos on behalf of the service provider. \
                        Administrators see every notification and its delivery under \
                        `notifications` in the API.\n";

/// The message of a notification of `kind` to the administrators of `organization` (or, for
/// `breach`, to an affected person, with `breach`).
pub(crate) fn render(
    kind: &str,
    payload: &Value,
    organization: &str,
    breach: Option<BreachFacts<'_>>,
) -> Message {
    let (subject, body) = match kind {
        "trial_ending" => (
            format!(
                "The trial of {organization} ends on {}",
                date(payload, "trial_ends_at")
            ),
            format!(
                "The trial of {organization} ends on {}. To keep working and keep every \
                 record, an administrator chooses a plan before then (Organization → choose \
                 a plan). If no plan is chosen, sign-in is limited to administrators after \
                 that date, and the organisation's data is deleted once its grace period is \
                 over.",
                date(payload, "trial_ends_at")
            ),
        ),
        "trial_extended" => (
            format!("The trial of {organization} was extended"),
            format!(
                "The trial of {organization} now ends on {}.",
                date(payload, "until")
            ),
        ),
        "trial_ended" => (
            format!("The trial of {organization} has ended"),
            format!(
                "The trial of {organization} has ended. Only administrators can sign in now, \
                 to choose a plan (which keeps every record) or to export the data. Unless a \
                 plan is chosen, the organisation and all its data will be deleted on {}.",
                date(payload, "purge_after")
            ),
        ),
        "plan_chosen" => (
            format!("{organization} is now on the {} plan", plan(payload)),
            match payload.get("limit_bytes").and_then(Value::as_u64) {
                Some(limit) => format!(
                    "{organization} is now on the {} plan, which includes {} of storage. \
                     Beyond it, each begun step of {} is billed as an overage.",
                    plan(payload),
                    size(limit),
                    bytes(payload, "step_bytes"),
                ),
                None => format!(
                    "{organization} is now on the {} plan; its storage is as agreed with the \
                     provider.",
                    plan(payload)
                ),
            },
        ),
        "storage_near_limit" => (
            format!("{organization} has used 80 % of its storage"),
            format!(
                "{organization} uses {} of the {} its plan includes.",
                bytes(payload, "used_bytes"),
                bytes(payload, "limit_bytes"),
            ),
        ),
        "storage_limit_reached" => (
            format!("{organization} has reached its storage limit"),
            format!(
                "{organization} uses {} of the {} its plan includes. A trial takes no new \
                 data from now on (reading and exporting still work); on a paid plan, each \
                 begun step beyond the limit is billed as an overage.",
                bytes(payload, "used_bytes"),
                bytes(payload, "limit_bytes"),
            ),
        ),
        "storage_overage" => (
            format!("{organization} is beyond its storage limit"),
            format!(
                "{organization} uses {}, beyond the {} its plan includes: {} overage step(s) \
                 of {} are billed.",
                bytes(payload, "used_bytes"),
                bytes(payload, "limit_bytes"),
                payload.get("steps").and_then(Value::as_u64).unwrap_or(0),
                bytes(payload, "step_bytes"),
            ),
        ),
        "suspended" => (
            format!("{organization} is suspended"),
            format!(
                "The service provider suspended {organization}: {}. Until it is resumed, \
                 administrators can sign in only to see the organisation's status and to \
                 export its data.",
                text(payload, "reason")
            ),
        ),
        "resumed" => (
            format!("{organization} is resumed"),
            format!("{organization} is resumed: everyone can sign in and work again."),
        ),
        "cancellation_scheduled" => (
            format!("The subscription of {organization} is cancelled"),
            format!(
                "The subscription of {organization} ends on {}. Until then everything works \
                 as before, and an administrator can withdraw the cancellation. Afterwards \
                 administrators can sign in to read and export the data during the migration \
                 window; then the organisation and its data are deleted.",
                date(payload, "effective_at")
            ),
        ),
        "cancellation_withdrawn" => (
            format!("The cancellation of {organization} was withdrawn"),
            format!("The subscription of {organization} continues as before."),
        ),
        "subscription_ended" => (
            format!("The subscription of {organization} has ended"),
            format!(
                "The subscription of {organization} has ended. Administrators can sign in to \
                 read and export the data until {}; then the organisation and all its data \
                 are deleted.",
                date(payload, "migration_access_until")
            ),
        ),
        "deletion_approaching" => (
            format!(
                "The data of {organization} will be deleted on {}",
                date(payload, "at")
            ),
            format!(
                "The organisation {organization} and all its data will be deleted on {}. \
                 Administrators can still sign in and export everything until then.",
                date(payload, "at")
            ),
        ),
        "purged" => (
            format!("The data of {organization} has been deleted"),
            format!(
                "The organisation {organization} and all its data were deleted on {}: its \
                 database, its keys and its files. The provider keeps only a record that it \
                 existed and when and why it was deleted.",
                date(payload, "purged_at")
            ),
        ),
        "breach" => {
            let (detected, description) = breach
                .map(|b| {
                    (
                        b.detected_at.format("%-d %B %Y").to_string(),
                        b.description.to_owned(),
                    )
                })
                .unwrap_or_default();
            (
                format!("{organization}: a personal-data breach that may concern you"),
                format!(
                    "{organization} informs you of a personal-data breach that may concern data \
                     it holds about you (GDPR Art. 34). It was detected on {detected}.\n\nWhat \
                     happened:\n{description}\n\nTo ask what data of yours is concerned, or to \
                     exercise your rights, contact {organization}."
                ),
            )
        }
        other => (
            format!("A notice about {organization}"),
            format!("{organization}: {other}."),
        ),
    };
    Message {
        subject,
        body: body + SIGN_OFF,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes_read_as_the_plans_count() {
        assert_eq!(size(30_000_000_000), "30 GB");
        assert_eq!(size(2_500_000_000), "2.5 GB");
        assert_eq!(size(1_200_000), "2 MB");
    }

    #[test]
    fn a_trial_notice_names_its_date() {
        let message = render(
            "trial_ending",
            &json!({"trial_ends_at": "2026-12-09T10:00:00Z"}),
            "Acme",
            None,
        );
        assert_eq!(
            message.subject,
            "The trial of Acme ends on 9 December 2026, 10:00 UTC"
        );
        assert!(message.body.contains("chooses a plan"));
    }

    #[test]
    fn a_breach_notice_tells_what_happened() {
        let detected_at = DateTime::parse_from_rfc3339("2026-11-30T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let message = render(
            "breach",
            &json!({}),
            "Acme",
            Some(BreachFacts {
                detected_at,
                description: "A laptop was stolen.",
            }),
        );
        assert!(message.body.contains("30 November 2026"));
        assert!(message.body.contains("A laptop was stolen."));
    }
}
