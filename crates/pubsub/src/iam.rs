//! IAM for Pub/Sub resources, as Google's `google.iam.v1` API has it: a [`Policy`] (bindings of
//! roles to members, an `etag` for read-modify-write) on each topic, subscription and snapshot,
//! set and read with `setIamPolicy`/`getIamPolicy` and probed with `testIamPermissions`
//! (`gcloud pubsub topics add-iam-policy-binding` calls the first two).
//!
//! Who is checked: a caller the listener admits with a bearer token that is not the admin's
//! (an identity or access token of a service account, as the metadata server gives instances)
//! is a [`Caller::Account`]; each call then needs the permission Pub/Sub's access control page
//! names on the resource it touches (`pubsub.topics.publish` on the topic for `Publish`,
//! `pubsub.subscriptions.consume` on the subscription for pulls and acks, ...), granted by a
//! role in that resource's policy. Calls on a project (create, list) need a project-level
//! grant, which Skiff does not keep: only the admin makes them. The admin, loopback callers and
//! Skiff's own instances without a token are [`Caller::Admin`] and pass every check.

use crate::error::{PubsubError, Result};
use serde::{Deserialize, Serialize};

/// Who is calling, as the listener decided (kept in the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// May do anything: the admin token or identity, loopback, Skiff's instances.
    Admin,
    /// A service account (its email), checked against resource policies.
    Account(String),
}

/// A role binding: `role` granted to `members` (`serviceAccount:EMAIL`, `user:EMAIL`,
/// `group:EMAIL`, `domain:DOMAIN`, `allUsers`, `allAuthenticatedUsers`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Binding {
    pub role: String,
    #[serde(default)]
    pub members: Vec<String>,
}

/// An IAM policy in its JSON shape (`version` 1; `etag` base64, output on read and checked on
/// write when given).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bindings: Vec<Binding>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub etag: String,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

/// The permissions of `role` on a Pub/Sub resource, from Google's "Access control with IAM"
/// page for Pub/Sub (predefined roles) and the basic roles.
pub fn permissions_of(role: &str) -> &'static [&'static str] {
    const VIEWER: &[&str] = &[
        "pubsub.topics.get",
        "pubsub.subscriptions.get",
        "pubsub.snapshots.get",
    ];
    const PUBLISHER: &[&str] = &["pubsub.topics.publish"];
    const SUBSCRIBER: &[&str] = &[
        "pubsub.subscriptions.consume",
        "pubsub.topics.attachSubscription",
        "pubsub.snapshots.seek",
    ];
    const EDITOR: &[&str] = &[
        "pubsub.topics.get",
        "pubsub.topics.publish",
        "pubsub.topics.update",
        "pubsub.topics.delete",
        "pubsub.topics.attachSubscription",
        "pubsub.topics.detachSubscription",
        "pubsub.subscriptions.get",
        "pubsub.subscriptions.consume",
        "pubsub.subscriptions.update",
        "pubsub.subscriptions.delete",
        "pubsub.snapshots.get",
        "pubsub.snapshots.seek",
        "pubsub.snapshots.delete",
    ];
    const ADMIN: &[&str] = &[
        "pubsub.topics.get",
        "pubsub.topics.publish",
        "pubsub.topics.update",
        "pubsub.topics.delete",
        "pubsub.topics.attachSubscription",
        "pubsub.topics.detachSubscription",
        "pubsub.topics.getIamPolicy",
        "pubsub.topics.setIamPolicy",
        "pubsub.subscriptions.get",
        "pubsub.subscriptions.consume",
        "pubsub.subscriptions.update",
        "pubsub.subscriptions.delete",
        "pubsub.subscriptions.getIamPolicy",
        "pubsub.subscriptions.setIamPolicy",
        "pubsub.snapshots.get",
        "pubsub.snapshots.seek",
        "pubsub.snapshots.delete",
        "pubsub.snapshots.getIamPolicy",
        "pubsub.snapshots.setIamPolicy",
    ];
    match role {
        "roles/pubsub.viewer" | "roles/viewer" => VIEWER,
        "roles/pubsub.publisher" => PUBLISHER,
        "roles/pubsub.subscriber" => SUBSCRIBER,
        "roles/pubsub.editor" | "roles/editor" => EDITOR,
        "roles/pubsub.admin" | "roles/owner" => ADMIN,
        _ => &[],
    }
}

/// Checks a policy a caller wants to set: known roles, well-formed members. Errors:
/// `InvalidArgument` naming the binding.
pub fn check_policy(p: &Policy) -> Result<()> {
    if !matches!(p.version, 0 | 1 | 3) {
        return Err(PubsubError::invalid(format!(
            "policy version {} is not supported: use 1",
            p.version
        )));
    }
    for b in &p.bindings {
        if permissions_of(&b.role).is_empty() {
            return Err(PubsubError::invalid(format!(
                "Role {} is not supported for this resource: use roles/pubsub.publisher, roles/pubsub.subscriber, roles/pubsub.viewer, roles/pubsub.editor or roles/pubsub.admin (or a basic role: roles/viewer, roles/editor, roles/owner)",
                b.role
            )));
        }
        for m in &b.members {
            let ok = matches!(m.as_str(), "allUsers" | "allAuthenticatedUsers")
                || ["serviceAccount:", "user:", "group:", "domain:"]
                    .iter()
                    .any(|p| m.strip_prefix(p).is_some_and(|rest| !rest.is_empty()));
            if !ok {
                return Err(PubsubError::invalid(format!(
                    "Invalid member {m:?} in the binding of {}: use serviceAccount:EMAIL, user:EMAIL, group:EMAIL, domain:DOMAIN, allUsers or allAuthenticatedUsers",
                    b.role
                )));
            }
        }
    }
    Ok(())
}

/// Whether `policy` grants `permission` to service account `email` (as `serviceAccount:EMAIL`,
/// `allAuthenticatedUsers` or `allUsers`).
pub fn grants(policy: &Policy, email: &str, permission: &str) -> bool {
    let me = format!("serviceAccount:{email}");
    policy.bindings.iter().any(|b| {
        b.members
            .iter()
            .any(|m| *m == me || m == "allAuthenticatedUsers" || m == "allUsers")
            && permissions_of(&b.role).contains(&permission)
    })
}

/// The `PermissionDenied` error Google gives, naming the permission and the resource.
pub fn denied(permission: &str, resource: &str) -> PubsubError {
    PubsubError::PermissionDenied(format!(
        "User not authorized to perform this action. (permission {permission} on {resource})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(role: &str, member: &str) -> Policy {
        Policy {
            version: 1,
            bindings: vec![Binding {
                role: role.into(),
                members: vec![member.into()],
            }],
            etag: String::new(),
        }
    }

    #[test]
    fn roles_grant_their_permissions_to_their_members() {
        let p = policy(
            "roles/pubsub.publisher",
            "serviceAccount:a@p.iam.gserviceaccount.com",
        );
        assert!(grants(
            &p,
            "a@p.iam.gserviceaccount.com",
            "pubsub.topics.publish"
        ));
        assert!(!grants(
            &p,
            "a@p.iam.gserviceaccount.com",
            "pubsub.subscriptions.consume"
        ));
        assert!(!grants(
            &p,
            "b@p.iam.gserviceaccount.com",
            "pubsub.topics.publish"
        ));
        let p = policy("roles/pubsub.subscriber", "allAuthenticatedUsers");
        assert!(grants(&p, "anyone@x", "pubsub.subscriptions.consume"));
        assert!(!grants(&p, "anyone@x", "pubsub.topics.setIamPolicy"));
        let p = policy("roles/pubsub.admin", "serviceAccount:a@x");
        assert!(grants(&p, "a@x", "pubsub.topics.setIamPolicy"));
    }

    #[test]
    fn bad_policies_are_refused() {
        check_policy(&policy("roles/pubsub.viewer", "user:a@b.c")).unwrap();
        let e = check_policy(&policy("roles/run.invoker", "user:a@b.c")).unwrap_err();
        assert!(e.to_string().contains("roles/run.invoker"), "{e}");
        let e = check_policy(&policy("roles/pubsub.viewer", "someone")).unwrap_err();
        assert!(e.to_string().contains("Invalid member"), "{e}");
        let mut p = policy("roles/pubsub.viewer", "user:a@b.c");
        p.version = 2;
        assert!(check_policy(&p).is_err());
    }
}
