//! Resource names and their validation, as the Pub/Sub API states it: `projects/P/topics/T`,
//! `projects/P/subscriptions/S`, `projects/P/snapshots/N`, where the last segment has 3–255
//! characters, starts with a letter, holds only `[A-Za-z0-9-_.~+%]` and does not start with
//! `goog`.

use crate::error::{PubsubError, Result};

/// The kinds of named resources, with their collection segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Topic,
    Subscription,
    Snapshot,
}

impl Kind {
    fn collection(self) -> &'static str {
        match self {
            Kind::Topic => "topics",
            Kind::Subscription => "subscriptions",
            Kind::Snapshot => "snapshots",
        }
    }
    fn noun(self) -> &'static str {
        match self {
            Kind::Topic => "topic",
            Kind::Subscription => "subscription",
            Kind::Snapshot => "snapshot",
        }
    }
}

/// Checks a full resource name (`projects/P/topics/T`) and returns it unchanged.
///
/// Errors: `InvalidArgument` naming the rule broken, as the service does.
pub fn check(kind: Kind, name: &str) -> Result<()> {
    let parts: Vec<&str> = name.split('/').collect();
    let shape_ok = parts.len() == 4
        && parts[0] == "projects"
        && !parts[1].is_empty()
        && parts[2] == kind.collection();
    if !shape_ok {
        return Err(PubsubError::invalid(format!(
            "Invalid resource name given (name={name}). Refer to https://cloud.google.com/pubsub/docs/pubsub-basics#resource_names for more information: a {} is named projects/PROJECT/{}/NAME",
            kind.noun(),
            kind.collection()
        )));
    }
    check_id(parts[3]).map_err(|why| {
        PubsubError::invalid(format!(
            "Invalid resource name given (name={name}): the {} id {why}",
            kind.noun()
        ))
    })
}

/// The rule for the last segment; `Err` says what is wrong with it.
fn check_id(id: &str) -> std::result::Result<(), String> {
    let len = id.chars().count();
    if !(3..=255).contains(&len) {
        return Err(format!("must be 3 to 255 characters long, not {len}"));
    }
    if !id.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err("must start with a letter".into());
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.~+%".contains(*c)))
    {
        return Err(format!(
            "may hold only letters, digits and - _ . ~ + %, not {c:?}"
        ));
    }
    if id.to_ascii_lowercase().starts_with("goog") {
        return Err("must not start with \"goog\"".into());
    }
    Ok(())
}

/// `projects/P/KIND/ID` from a project and an id (or a full name, returned as is).
pub fn full(kind: Kind, project: &str, id: &str) -> String {
    if id.starts_with("projects/") {
        id.to_string()
    } else {
        format!("projects/{project}/{}/{id}", kind.collection())
    }
}

/// The project segment of a full name.
pub fn project_of(name: &str) -> &str {
    name.split('/').nth(1).unwrap_or("")
}

/// The name a detached subscription shows as its topic, as Pub/Sub does.
pub const DELETED_TOPIC: &str = "_deleted-topic_";

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(kind: Kind, name: &str) -> bool {
        check(kind, name).is_ok()
    }

    #[test]
    fn names() {
        assert!(ok(Kind::Topic, "projects/p/topics/abc"));
        assert!(ok(Kind::Topic, "projects/p/topics/a-b_c.d~e+f%g"));
        assert!(ok(Kind::Subscription, "projects/p/subscriptions/sub1"));
        assert!(!ok(Kind::Subscription, "projects/p/topics/sub1"));
        assert!(!ok(Kind::Topic, "projects/p/topics/ab"));
        assert!(!ok(Kind::Topic, "projects/p/topics/1abc"));
        assert!(!ok(Kind::Topic, "projects/p/topics/goog-x"));
        assert!(!ok(Kind::Topic, "projects/p/topics/a b c"));
        assert!(!ok(Kind::Topic, "projects/p/topics/abc/x"));
        assert!(!ok(Kind::Topic, "topics/abc"));
        assert!(ok(
            Kind::Topic,
            &format!("projects/p/topics/{}", "a".repeat(255))
        ));
        assert!(!ok(
            Kind::Topic,
            &format!("projects/p/topics/{}", "a".repeat(256))
        ));
        let e = check(Kind::Topic, "projects/p/topics/9xy")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must start with a letter"), "{e}");
    }

    #[test]
    fn full_names() {
        assert_eq!(full(Kind::Topic, "p", "t"), "projects/p/topics/t");
        assert_eq!(
            full(Kind::Topic, "p", "projects/q/topics/t"),
            "projects/q/topics/t"
        );
        assert_eq!(project_of("projects/q/topics/t"), "q");
    }
}
